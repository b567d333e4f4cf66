"""Task vectors and their SVDs, computed once per (base, expert) and kept on disk.

For expert e and every 2-D tensor (embeddings and head included): τ = θ_e − θ_base in fp32 and its thin SVD
U Σ Vᵀ (U m×r, Σ r, Vᵀ r×n, r = min(m, n)); for every 1-D tensor: τ itself. One safetensors file per expert,
`<cache_dir>/svd/<key>.safetensors`, keyed by the base's and the expert's content identities and the format
version, written tensor by tensor and published by rename; read memory-mapped afterwards (safetensors maps the
file, so a tensor costs nothing until its pages are touched). The SVD runs on the GPU when there is one.

Size: U and Vᵀ together hold r·(m + n) fp32 numbers per matrix, about four times the matrix in bf16, so a cache
of K experts is ~4K checkpoints on disk; materialisation reads the factors of every expert a genome uses.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open

from evolver.checkpoint_files import CheckpointError, CheckpointLayout, read_header, verify_experts
from evolver.safetensors_stream import StreamWriter
from serving.identity import checkpoint_identity

FORMAT_VERSION = "1"
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class UnsupportedTensorError(CheckpointError):
    """The base has tensors that cannot be merged: more than two dimensions, or not floating point."""


class SVDCacheError(CheckpointError):
    """A cache file that does not hold what its key promises (from another format version, or corrupt)."""


def cache_key(base: Path, expert: Path) -> str:
    text = f"{checkpoint_identity(base)}|{checkpoint_identity(expert)}|svd-v{FORMAT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def factor_specs(layout: CheckpointLayout) -> list[tuple[str, str, tuple[int, ...]]]:
    """What one expert's cache file holds, in file order: name::U, ::S, ::Vh per matrix, name::tau per vector."""
    unsupported = [f"{name} ({spec.dtype} {list(spec.shape)})" for name, spec in sorted(layout.tensors.items())
                   if len(spec.shape) not in (1, 2) or spec.dtype not in FLOAT_DTYPES]  # fmt: skip
    if unsupported:
        raise UnsupportedTensorError(
            f"{layout.folder}: {len(unsupported)} tensor(s) cannot be merged, only floating-point matrices and "
            f"vectors can: {', '.join(unsupported[:5])}" + (" …" if len(unsupported) > 5 else "")
        )
    specs: list[tuple[str, str, tuple[int, ...]]] = []
    for name in sorted(layout.tensors):
        shape = layout.tensors[name].shape
        if len(shape) == 2:
            m, n = shape
            r = min(m, n)
            specs += [(f"{name}::U", "F32", (m, r)), (f"{name}::S", "F32", (r,)), (f"{name}::Vh", "F32", (r, n))]
        else:
            specs.append((f"{name}::tau", "F32", shape))
    return specs


class SVDCache:
    """The factors of every expert's task vectors, opened memory-mapped (the handles stay open).

    Tensors it returns are read-only views of the mapped files: copy before changing one in place."""

    def __init__(self, base: Path, layout: CheckpointLayout, files: list[Path], experts: list[Path] | None = None):
        self.base = Path(base)
        self.layout = layout
        self.files = list(files)
        self.expert_paths = tuple(Path(e) for e in experts) if experts is not None else ()
        expected = {name: shape for name, _, shape in factor_specs(layout)}
        for path in self.files:
            header = read_header(path)
            header.pop("__metadata__", None)
            found = {name: tuple(entry["shape"]) for name, entry in header.items()}
            if found != expected or any(entry["dtype"] != "F32" for entry in header.values()):
                raise SVDCacheError(f"{path}: does not hold the factors of {layout.folder}'s tensors; delete it "
                                    "and build the cache again")  # fmt: skip
        self._handles = [safe_open(str(path), framework="pt") for path in self.files]
        self.matrix_names = tuple(sorted(n for n, s in layout.tensors.items() if len(s.shape) == 2))
        self.vector_names = tuple(sorted(n for n, s in layout.tensors.items() if len(s.shape) == 1))
        self._ranks = {name: min(layout.tensors[name].shape) for name in self.matrix_names}

    @property
    def experts(self) -> int:
        """K, the number of experts."""
        return len(self.files)

    def rank(self, name: str) -> int:
        return self._ranks[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.layout.tensors[name].shape

    def sigma(self, k: int, name: str) -> torch.Tensor:
        return self._handles[k].get_tensor(f"{name}::S")

    def factors(self, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        handle = self._handles[k]
        return handle.get_tensor(f"{name}::U"), handle.get_tensor(f"{name}::S"), handle.get_tensor(f"{name}::Vh")

    def task_vector(self, k: int, name: str) -> torch.Tensor:
        """τ_k for `name` in fp32: stored as is for a vector, U·diag(S)·Vh for a matrix."""
        if name in self._ranks:
            u, s, vh = self.factors(k, name)
            return (u * s) @ vh
        return self._handles[k].get_tensor(f"{name}::tau")

    @property
    def nbytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def _write_factors(base: CheckpointLayout, expert: Path, out: Path, device: str, progress: Progress) -> None:
    specs = factor_specs(base)
    bar = progress.add_task(f"SVD of {expert.name}", total=len(base.tensors))
    metadata = {"format_version": FORMAT_VERSION, "base": str(base.folder), "expert": str(expert)}
    base_handles = {shard: safe_open(str(base.folder / shard), framework="pt") for shard in base.shards}
    expert_layout = CheckpointLayout.read(expert)  # the expert may be sharded differently from the base
    expert_handles = {shard: safe_open(str(expert / shard), framework="pt") for shard in expert_layout.shards}
    with StreamWriter(out, specs, metadata=metadata, fsync=True) as writer:
        for name in sorted(base.tensors):
            theta = base_handles[base.tensors[name].shard].get_tensor(name)
            tuned = expert_handles[expert_layout.tensors[name].shard].get_tensor(name)
            tau = tuned.to(device, torch.float32) - theta.to(device, torch.float32)
            if tau.ndim == 2:
                u, s, vh = torch.linalg.svd(tau, full_matrices=False)
                writer.write(f"{name}::U", u)
                writer.write(f"{name}::S", s)
                writer.write(f"{name}::Vh", vh)
            else:
                writer.write(f"{name}::tau", tau)
            progress.advance(bar)


def build_svd_cache(
    base: Path, experts: list[Path], cache_dir: Path, device: str | None = None, progress: bool = True
) -> SVDCache:
    """The SVD cache of these experts over this base: computed for the experts not yet cached, then opened.

    Idempotent and safe across processes (one lock per expert file: a second process waits, then finds it)."""
    base, experts = Path(base), [Path(e) for e in experts]
    layout = verify_experts(base, experts)
    factor_specs(layout)  # refuse unsupported tensors before any work
    folder = Path(cache_dir) / "svd"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{cache_key(base, expert)}.safetensors" for expert in experts]
    todo = [(expert, path) for expert, path in zip(experts, files, strict=True) if not path.is_file()]
    if todo:
        bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), disable=not progress)  # fmt: skip
        with bars:
            for expert, path in todo:
                with open(path.with_suffix(".lock"), "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not path.is_file():
                        _write_factors(layout, expert, path, device or default_device(), bars)
    return SVDCache(base, layout, files, experts)
