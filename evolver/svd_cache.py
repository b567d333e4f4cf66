"""Task vectors' SVDs, computed once per (base, expert) and kept on disk: only what the checkpoints cannot give.

For expert e and a matrix (m×n, embeddings and head included) with τ = θ_e − θ_base in fp32 and thin SVD
U Σ Vᵀ (r = min(m, n)), a genome's term is U diag(g) Vᵀ. The smaller side's factor Q is square (r×r) and
orthogonal, so the larger one follows from τ itself: for m ≥ n, Q = V and U Σ = τ Q, so
U diag(g) Vᵀ = τ Q diag(g/σ) Qᵀ; for m < n, Q = U and Σ Vᵀ = Qᵀ τ, so U diag(g) Vᵀ = Q diag(g/σ) Qᵀ τ. Where
σ_i = 0 the direction does not exist in τ (τ q_i = 0) and contributes nothing whatever g_i is; the operators never
put a coefficient there (every coefficient of expert e is a multiple of σ_e). The cache therefore holds, per
matrix, Q (r×r) and σ (r) in fp32 and nothing for vectors; τ is read from the two checkpoints when needed, so the
experts' checkpoints must stay where they were when the cache was built (the cache key holds their content
identities, and is recomputed on every build).

Size: r² fp32 per matrix. For a square matrix that is twice its bf16 bytes, for a rectangular one far less
(by shape: Llama-3-8B 0.69× a checkpoint, Llama-3.2-1B 0.56×, SmolLM2-135M 0.78×). One safetensors
file per expert, `<cache_dir>/svd/<key>.safetensors`, written tensor by tensor, published by rename and read
memory-mapped. The decomposition runs on the GPU when there is one.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open

from cycleqd.evolver.checkpoint_files import CheckpointError, CheckpointLayout, read_header, verify_experts
from cycleqd.evolver.safetensors_stream import StreamWriter
from cycleqd.serving.identity import checkpoint_identity

FORMAT_VERSION = "2"  # 2: Q and σ per matrix only (1 held U, Σ, Vᵀ and the 1-D task vectors)
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


def tall(shape: tuple[int, ...]) -> bool:
    """Whether Q is the right factor V (m ≥ n: τ's rows are the larger side) rather than the left one U."""
    return shape[0] >= shape[1]


def factor_specs(layout: CheckpointLayout) -> list[tuple[str, str, tuple[int, ...]]]:
    """What one expert's cache file holds, in file order: name::Q (r×r) and name::S (r) per matrix."""
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
            r = min(shape)
            specs += [(f"{name}::Q", "F32", (r, r)), (f"{name}::S", "F32", (r,))]
    return specs


class TaskVectorReader:
    """τ_k = θ_k − θ_base in fp32, tensor by tensor, from the checkpoints themselves (handles opened lazily)."""

    def __init__(self, base: CheckpointLayout, experts: tuple[Path, ...]) -> None:
        self.base = base
        self.experts = experts
        self._layouts: dict[int, CheckpointLayout] = {}
        self._handles: dict[Path, object] = {}

    def _open(self, path: Path):  # noqa: ANN202 - a safetensors handle
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def base_tensor(self, name: str) -> torch.Tensor:
        return self._open(self.base.folder / self.base.tensors[name].shard).get_tensor(name)  # type: ignore[attr-defined]

    def expert_tensor(self, k: int, name: str) -> torch.Tensor:
        """Expert k's tensor as stored (the experts may be sharded differently from the base)."""
        if k not in self._layouts:
            self._layouts[k] = CheckpointLayout.read(self.experts[k])
        layout = self._layouts[k]
        return self._open(layout.folder / layout.tensors[name].shard).get_tensor(name)  # type: ignore[attr-defined]

    def task_vector(self, k: int, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        tuned = self.expert_tensor(k, name).to(device, torch.float32)
        return tuned.sub_(self.base_tensor(name).to(device, torch.float32))


class SVDCache:
    """Each expert's per-matrix Q and σ (memory-mapped; the handles stay open) and its task vectors (read from
    the checkpoints on demand).

    Tensors it returns from the cache files are read-only views of the mapped files: copy before changing one."""

    def __init__(self, base: Path, layout: CheckpointLayout, files: list[Path], experts: list[Path]) -> None:
        self.base = Path(base)
        self.layout = layout
        self.files = list(files)
        self.expert_paths = tuple(Path(e) for e in experts)
        if len(self.expert_paths) != len(self.files):
            raise SVDCacheError(f"{len(self.files)} cache files for {len(self.expert_paths)} experts")
        expected = {name: shape for name, _, shape in factor_specs(layout)}
        for path in self.files:
            header = read_header(path)
            header.pop("__metadata__", None)
            found = {name: tuple(entry["shape"]) for name, entry in header.items()}
            if found != expected or any(entry["dtype"] != "F32" for entry in header.values()):
                raise SVDCacheError(f"{path}: does not hold the factors of {layout.folder}'s tensors; delete it "
                                    "and build the cache again")  # fmt: skip
        self._handles = [safe_open(str(path), framework="pt") for path in self.files]
        self.reader = TaskVectorReader(layout, self.expert_paths)
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

    def orthogonal(self, k: int, name: str) -> torch.Tensor:
        """Q: V (n×n) when the matrix is tall or square, U (m×m) when it is wide; see the module docstring."""
        return self._handles[k].get_tensor(f"{name}::Q")

    def task_vector(self, k: int, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """τ_k for `name` in fp32, from the expert's and the base's checkpoints."""
        return self.reader.task_vector(k, name, device)

    def factors(self, k: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U, σ, Vᵀ of τ_k, the larger factor rebuilt from τ (for inspection; materialisation never needs it).
        Columns of the rebuilt factor where σ = 0 are zero, so U diag(σ) Vᵀ = τ still holds."""
        q, s, tau = self.orthogonal(k, name), self.sigma(k, name), self.task_vector(k, name)
        inverse = torch.where(s > 0, 1 / s, torch.zeros_like(s))
        if tall(self.shape(name)):
            return (tau @ q) * inverse, s, q.T
        return q, s, (q.T @ tau) * inverse[:, None]

    @property
    def nbytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def smaller_side_svd(tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q (r×r, columns = the smaller side's singular vectors, by descending σ) and σ, in fp32 on the CPU.

    From the eigendecomposition of the r×r Gram matrix (τᵀτ, or ττᵀ when wide) in fp64: the same factors as a
    thin SVD, several times faster on a GPU, and σ as accurate as an fp32 SVD's down to ~1e-8 of the largest
    (an exact zero stays zero). Only orthogonality of Q matters for the experts and their crossovers."""
    t = tau.double()
    gram = t.T @ t if tall(tuple(tau.shape)) else t @ t.T
    eigenvalues, vectors = torch.linalg.eigh(gram)  # ascending
    sigma = eigenvalues.flip(0).clamp_min(0).sqrt()
    return vectors.flip(1).float().contiguous().cpu(), sigma.float().cpu()


def _write_factors(base: CheckpointLayout, expert: Path, out: Path, device: str, progress: Progress) -> None:
    specs = factor_specs(base)
    matrices = [name for name in sorted(base.tensors) if len(base.tensors[name].shape) == 2]
    bar = progress.add_task(f"SVD of {expert.name}", total=len(matrices))
    metadata = {"format_version": FORMAT_VERSION, "base": str(base.folder), "expert": str(expert)}
    reader = TaskVectorReader(base, (expert,))
    with StreamWriter(out, specs, metadata=metadata, fsync=True) as writer:
        for name in matrices:
            q, sigma = smaller_side_svd(reader.task_vector(0, name, device))
            writer.write(f"{name}::Q", q)
            writer.write(f"{name}::S", sigma)
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
