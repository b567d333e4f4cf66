"""Whether this machine has a CUDA GPU that torch can use (nvidia-smi first: importing torch's CUDA is slow)."""

from __future__ import annotations

import shutil


def gpu_available() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
