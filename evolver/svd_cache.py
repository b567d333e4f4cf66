"""Task vectors and their SVDs, computed once per (base, expert) and kept on disk.

For expert e and every 2-D tensor (embeddings and head included): τ = θ_e − θ_base in fp32 and its thin SVD
U Σ Vᵀ; for every 1-D tensor: τ itself. One safetensors file per expert, keyed by the base's and the expert's
content identities, read memory-mapped afterwards. The SVD runs on the GPU when there is one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import safe_open

from evolver.checkpoint_files import CheckpointError, CheckpointLayout, verify_experts
from evolver.safetensors_stream import StreamWriter
from serving.identity import checkpoint_identity

FORMAT_VERSION = "1"


def cache_key(base: Path, expert: Path) -> str:
    text = f"{checkpoint_identity(base)}|{checkpoint_identity(expert)}|svd-v{FORMAT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class SVDCache:
    """The factors of every expert's task vectors, opened memory-mapped."""

    def __init__(self, base: Path, layout: CheckpointLayout, files: list[Path]) -> None:
        self.base = base
        self.layout = layout
        self.files = files
        self._handles = [safe_open(str(path), framework="pt") for path in files]
        self.matrix_names = tuple(sorted(n for n, s in layout.tensors.items() if len(s.shape) == 2))
        self.vector_names = tuple(sorted(n for n, s in layout.tensors.items() if len(s.shape) == 1))
        self._ranks = {name: min(layout.tensors[name].shape) for name in self.matrix_names}

    @property
    def experts(self) -> int:
        return len(self.files)

    def rank(self, name: str) -> int:
        return self._ranks[name]

    def sigma(self, k: int, name: str) -> torch.Tensor:
        return self._handles[k].get_tensor(f"{name}::S")

    def factors(self, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        handle = self._handles[k]
        return handle.get_tensor(f"{name}::U"), handle.get_tensor(f"{name}::S"), handle.get_tensor(f"{name}::Vh")

    def task_vector(self, k: int, name: str) -> torch.Tensor:
        if name in self._ranks:
            u, s, vh = self.factors(k, name)
            return (u * s) @ vh
        return self._handles[k].get_tensor(f"{name}::tau")

    @property
    def nbytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def _factor_specs(layout: CheckpointLayout) -> list[tuple[str, str, tuple[int, ...]]]:
    specs: list[tuple[str, str, tuple[int, ...]]] = []
    for name in sorted(layout.tensors):
        shape = layout.tensors[name].shape
        if len(shape) == 2:
            m, n = shape
            r = min(m, n)
            specs += [(f"{name}::U", "F32", (m, r)), (f"{name}::S", "F32", (r,)), (f"{name}::Vh", "F32", (r, n))]
        elif len(shape) == 1:
            specs.append((f"{name}::tau", "F32", shape))
        else:
            raise CheckpointError(f"{layout.folder}: tensor {name} has {len(shape)} dimensions; only matrices and "
                                  "vectors can be merged")  # fmt: skip
    return specs


def _write_factors(base: CheckpointLayout, expert: Path, out: Path, device: str, progress: Progress | None) -> None:
    specs = _factor_specs(base)
    bar = progress.add_task(f"SVD {expert.name}", total=len(base.tensors)) if progress else None
    handles: dict[tuple[Path, str], object] = {}

    def tensor(folder: Path, name: str) -> torch.Tensor:
        shard = base.tensors[name].shard
        if (folder, shard) not in handles:
            handles[(folder, shard)] = safe_open(str(folder / shard), framework="pt")
        return handles[(folder, shard)].get_tensor(name)  # type: ignore[attr-defined]

    with StreamWriter(out, specs, metadata={"base": str(base.folder), "expert": str(expert)}) as writer:
        for name in sorted(base.tensors):
            tau = tensor(expert, name).to(device, torch.float32) - tensor(base.folder, name).to(device, torch.float32)
            if tau.ndim == 2:
                u, s, vh = torch.linalg.svd(tau, full_matrices=False)
                writer.write(f"{name}::U", u)
                writer.write(f"{name}::S", s)
                writer.write(f"{name}::Vh", vh)
            else:
                writer.write(f"{name}::tau", tau)
            if progress and bar is not None:
                progress.advance(bar)


def build_svd_cache(
    base: Path, experts: list[Path], cache_dir: Path, device: str | None = None, progress: bool = True
) -> SVDCache:
    """The SVD cache of these experts over this base: computed for the experts not yet cached, then opened."""
    layout = verify_experts(base, experts)
    folder = cache_dir / "svd"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{cache_key(base, expert)}.safetensors" for expert in experts]
    todo = [(expert, path) for expert, path in zip(experts, files, strict=True) if not path.is_file()]
    if todo:
        bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        disable=not progress)  # fmt: skip
        with bars:
            for expert, path in todo:
                _write_factors(layout, expert, path, device or default_device(), bars)
    return SVDCache(base, layout, files)
