"""Checkpoints the tests make from real ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def perturbed_checkpoint(source: Path, out: Path, seed: int, scale: float) -> Path:
    """A copy of checkpoint `source` with Gaussian noise (`scale` × each matrix's std) on every matrix."""
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(".") and item.suffix != ".safetensors":
            shutil.copy(item, out / item.name)
    generator = torch.Generator().manual_seed(seed)
    for weights in source.glob("*.safetensors"):
        tensors = load_file(weights)
        for name, tensor in tensors.items():
            if tensor.ndim == 2:
                noise = torch.randn(tensor.shape, generator=generator) * tensor.float().std() * scale
                tensors[name] = (tensor.float() + noise).to(tensor.dtype)
        save_file(tensors, out / weights.name, metadata={"format": "pt"})
    return out
