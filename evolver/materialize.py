"""A genome made into a checkpoint laid out exactly like the base (same shards, index, config, tokenizer).

Tensor by tensor: θ_base in fp32, plus for a matrix one matmul [U_1·g_1 | … | U_K·g_K] @ [V_1ᵀ; …; V_Kᵀ] (experts
with all-zero coefficients skipped), for a vector Σ c_e τ_e, plus the Gaussian terms; cast to the base's dtype
and streamed into the shard. The folder is published by rename, with the genome's hash in a marker file, so a
second request for the same genome returns at once.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import torch
from rich.progress import Progress
from safetensors import safe_open

from evolver.genome import Genome
from evolver.safetensors_stream import TORCH_DTYPES, StreamWriter
from evolver.svd_cache import SVDCache, default_device

MARKER = ".cycleqd-genome"


def noise_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def dense_delta(genome: Genome, cache: SVDCache, name: str, device: str = "cpu") -> torch.Tensor:
    """The fp32 sum the genome adds to the base's tensor `name`."""
    shape = cache.layout.tensors[name].shape
    coefficients = genome.coefficients[name]
    if name in cache.matrix_names:
        left, right = [], []
        for k in range(cache.experts):
            row = coefficients[k]
            if torch.any(row != 0):
                u, _, vh = cache.factors(k, name)
                left.append(u.to(device) * row.to(device))
                right.append(vh.to(device))
        delta = torch.cat(left, 1) @ torch.cat(right, 0) if left else torch.zeros(shape, device=device)
    else:
        delta = torch.zeros(shape, device=device)
        for k in range(cache.experts):
            if coefficients[k] != 0:
                delta += float(coefficients[k]) * cache.task_vector(k, name).to(device)
    for seed, scale in genome.noise:
        generator = torch.Generator().manual_seed(noise_seed(seed, name))
        delta += scale * torch.randn(shape, generator=generator).to(device)
    return delta


def materialize(genome: Genome, cache: SVDCache, out: Path, device: str | None = None, progress: bool = False) -> Path:
    """Write the genome's checkpoint to `out` (unless it is already there) and return `out`."""
    digest = genome.content_hash()
    if (out / MARKER).is_file() and (out / MARKER).read_text() == digest:
        return out
    device = device or default_device()
    layout = cache.layout
    temporary = out.with_name(f".{out.name}.{uuid.uuid4().hex}.writing")  # concurrent writers never collide
    layout.copy_non_weight_files(temporary)
    bars = Progress(disable=not progress)
    with bars:
        bar = bars.add_task("materialise", total=len(layout.tensors))
        for shard in layout.shards:
            names = sorted(layout.names_in(shard))
            specs = [(name, layout.tensors[name].dtype, layout.tensors[name].shape) for name in names]
            with safe_open(str(layout.folder / shard), framework="pt") as base, \
                    StreamWriter(temporary / shard, specs, metadata={"format": "pt"}) as writer:  # fmt: skip
                for name in names:
                    weight = base.get_tensor(name).to(device, torch.float32) + dense_delta(genome, cache, name, device)
                    writer.write(name, weight.to(TORCH_DTYPES[layout.tensors[name].dtype]))
                    bars.advance(bar)
    (temporary / MARKER).write_text(digest)
    if (out / MARKER).is_file() and (out / MARKER).read_text() == digest:
        shutil.rmtree(temporary)  # another writer published the same genome meanwhile
        return out
    shutil.rmtree(out, ignore_errors=True)
    temporary.rename(out)
    return out
