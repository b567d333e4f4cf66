"""A genome made into a checkpoint laid out exactly like the base (same shards, index, config, tokenizer).

Tensor by tensor, in fp32: θ_base, plus per expert e with non-zero coefficients its task vector τ_e (read from
its checkpoint, minus the base) times c_e, and for a matrix whose ratios h = g_e/σ_e are not all c_e the
remainder τ_e Q_e diag(h − c_e) Q_eᵀ (Q diag(h − c) Qᵀ τ for a wide matrix; see evolver.svd_cache), plus the
Gaussian terms; then cast to the base's dtype and streamed into the shard. The arithmetic runs on `device` (the
GPU when there is one); buffers are reused from tensor to tensor, because on the CPU fresh multi-megabyte
allocations cost page faults comparable to the copies themselves. The folder is published by rename, with the
genome's hash in a marker file, so a second request for the same genome returns at once.

Bytes read per child: the base once, each contributing expert's checkpoint once, and Q only for the expert whose
ratios vary (the mutated one): at most ~2 checkpoints per contributing expert, ~1 for a plain crossover.
Arithmetic: 2·r³ + 2·m·n·r flops per matrix per mutated expert, none for the others.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress
from safetensors import safe_open

from cycleqd.evolver.genome import Genome
from cycleqd.evolver.safetensors_stream import TORCH_DTYPES, StreamWriter
from cycleqd.evolver.svd_cache import SVDCache, default_device, tall

MARKER = ".cycleqd-genome"
# Ratios g/σ this close to their mean are a crossover of whole experts: c·τ alone, no matmul (an error of at most
# this fraction of the term, ~8 fp32 ulps, which the ratios' own rounding already carries).
CONSTANT_RATIO = 2.0**-20


class MaterializeError(ValueError):
    """A genome that does not fit the cache, or an output folder that is not ours to replace."""


@dataclass
class MaterializeStats:
    """Where materialisation time goes, filled in when passed to `materialize` (costs a device sync per step).

    gather: the base and the experts' tensors into fp32 task vectors and the c·τ adds (reading the mapped files
    happens here); matmul: the projector Q diag(h − c) Qᵀ and its product with τ, per mutated matrix; write: noise,
    the cast, the writes."""

    gather_s: float = 0.0
    matmul_s: float = 0.0
    write_s: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0


def noise_seed(seed: int, name: str) -> int:
    """The generator seed of a Gaussian term's noise on one tensor: fixed by (seed, name), in every process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


class _Workspace:
    """Flat buffers reused across tensors, one per role, grown to the largest tensor seen."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:  # noqa: ANN001
        device = torch.device(device) if device is not None else self.device
        numel = math.prod(shape)
        buffer = self._buffers.get(role)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers[role] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


def check_fits(genome: Genome, cache: SVDCache) -> None:
    """Raise MaterializeError unless the genome has coefficients of the right shape for every cached tensor."""
    names = set(cache.matrix_names) | set(cache.vector_names)
    if set(genome.coefficients) != names:
        missing = sorted(names - set(genome.coefficients)) or sorted(set(genome.coefficients) - names)
        raise MaterializeError(f"the genome's tensors are not the base {cache.base}'s (first difference: "
                               f"{missing[0]}): it was made for another base")  # fmt: skip
    for name in cache.matrix_names:
        if tuple(genome.coefficients[name].shape) != (cache.experts, cache.rank(name)):
            raise MaterializeError(f"coefficients of {name} are {list(genome.coefficients[name].shape)}, the cache "
                                   f"needs [{cache.experts}, {cache.rank(name)}] (K experts × rank)")  # fmt: skip
    for name in cache.vector_names:
        if tuple(genome.coefficients[name].shape) != (cache.experts,):
            raise MaterializeError(f"coefficients of {name} are {list(genome.coefficients[name].shape)}, the cache "
                                   f"needs [{cache.experts}]")  # fmt: skip


def coefficient_ratios(row: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
    """h = g/σ where σ > 0 (0 elsewhere: that direction is not in τ), c = its mean over σ > 0, and whether h
    varies (then the remainder τ Q diag(h − c) Qᵀ is needed, and Q is read)."""
    positive = sigma > 0
    if not bool(positive.any()):
        return torch.zeros_like(row), 0.0, False
    h = torch.where(positive, row / torch.where(positive, sigma, torch.ones_like(sigma)), 0.0)
    c = float(h[positive].mean())
    return h, c, float((h - c)[positive].abs().max()) > CONSTANT_RATIO * abs(c)


def _accumulate(
    genome: Genome,
    cache: SVDCache,
    name: str,
    base: torch.Tensor,
    out: torch.Tensor,
    work: _Workspace,
    stats: MaterializeStats | None,
) -> None:
    """out += the genome's fp32 delta for `name`; `base` holds θ_base in fp32 on out's device.

    Per contributing expert: τ from the two checkpoints, then c·τ (+ τ Q diag(h − c) Qᵀ, or Q diag(h − c) Qᵀ τ for
    a wide matrix, unless h is constant). Splitting off c keeps the matmul to the mutation's part: a crossover of
    experts is c·τ with no matmul and no read of Q, and rounding in Q only touches the small remainder."""
    device = out.device
    coefficients = genome.coefficients[name]
    sync = _syncer(device, stats)
    matrix = name in cache.matrix_names
    for k in range(cache.experts):
        row = coefficients[k]
        if not bool(torch.any(row != 0)):
            continue
        started = sync()
        tau = work.get("tau", tuple(out.shape))
        expert = cache.reader.expert_tensor(k, name)
        if expert.device == tau.device:
            torch.sub(expert, base, out=tau)  # one pass: the bf16 → fp32 promotion is exact, as a copy would be
        else:
            tau.copy_(expert).sub_(base)
        if stats:
            stats.bytes_read += cache.layout.tensors[name].nbytes
        if not matrix:
            out.add_(tau, alpha=float(row))
            if stats:
                stats.gather_s += sync() - started
            continue
        sigma = cache.sigma(k, name)
        h, c, varies = coefficient_ratios(row, sigma)
        out.add_(tau, alpha=c)
        if not varies:
            if stats:
                stats.gather_s += sync() - started
            continue
        q = cache.orthogonal(k, name)
        r = q.shape[0]
        q_here = work.get("q", (r, r)).copy_(q)
        scaled = work.get("scaled", (r, r)).copy_(q_here).mul_(torch.where(sigma > 0, h - c, 0.0).to(device))
        if stats:
            stats.bytes_read += (q.numel() + sigma.numel()) * 4
        mid = sync()
        projector = torch.mm(scaled, q_here.T, out=work.get("projector", (r, r)))
        if tall(tuple(out.shape)):
            out.addmm_(tau, projector)
        else:
            out.addmm_(projector, tau)
        if stats:
            stats.gather_s += mid - started
            stats.matmul_s += sync() - mid
    started = sync()
    for seed, scale in genome.noise:
        # Drawn on the CPU whatever the device, so that a genome materialises to the same weights everywhere.
        noise = work.get("noise", tuple(out.shape), device="cpu")
        torch.randn(tuple(out.shape), generator=torch.Generator().manual_seed(noise_seed(seed, name)), out=noise)
        out.add_(noise.to(device), alpha=scale)
    if stats and genome.noise:
        stats.write_s += sync() - started


def _syncer(device: torch.device, stats: MaterializeStats | None):  # noqa: ANN202
    """A clock for the stats; on a GPU it waits for queued work first, or the times would be launch times."""
    if stats is None:
        return lambda: 0.0
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


def dense_delta(genome: Genome, cache: SVDCache, name: str, device: str = "cpu") -> torch.Tensor:
    """The fp32 sum the genome adds to the base's tensor `name` (what materialisation adds before the cast)."""
    check_fits(genome, cache)
    out = torch.zeros(cache.shape(name), device=device)
    base = cache.reader.base_tensor(name).to(device, torch.float32)
    _accumulate(genome, cache, name, base, out, _Workspace(torch.device(device)), None)
    return out


def materialize(
    genome: Genome,
    cache: SVDCache,
    out: Path,
    device: str | None = None,
    progress: bool = False,
    stats: MaterializeStats | None = None,
) -> Path:
    """Write the genome's checkpoint to `out` (unless it is already there) and return `out`.

    `out` is replaced if it holds another genome's checkpoint (its marker says so); any other existing folder is
    refused, never deleted. Peak memory: a few buffers the size of the largest tensor and its factors."""
    out = Path(out)
    digest = genome.content_hash()
    if _marker(out) == digest:
        return out
    if out.exists() and _marker(out) is None:
        raise MaterializeError(f"{out}: exists and is not a checkpoint materialised by cycleqd; refusing to "
                               "replace it (remove it, or choose another folder)")  # fmt: skip
    check_fits(genome, cache)
    target = torch.device(device or default_device())
    layout = cache.layout
    temporary = out.with_name(f".{out.name}.{uuid.uuid4().hex}.writing")  # concurrent writers never collide
    work = _Workspace(target)
    sync = _syncer(target, stats)
    try:
        layout.copy_non_weight_files(temporary)
        with Progress(disable=not progress) as bars:
            bar = bars.add_task(f"materialise {digest[:12]}", total=len(layout.tensors))
            for shard in layout.shards:
                names = layout.names_in(shard)
                specs = [(name, layout.tensors[name].dtype, layout.tensors[name].shape) for name in names]
                metadata = {"format": "pt", **layout.shard_metadata.get(shard, {})}
                with safe_open(str(layout.folder / shard), framework="pt") as base, \
                        StreamWriter(temporary / shard, specs, metadata=metadata) as writer:  # fmt: skip
                    for name in names:
                        spec = layout.tensors[name]
                        started = sync()
                        theta = work.get("base", spec.shape).copy_(base.get_tensor(name))  # bf16 → fp32, reused
                        weight = work.get("weight", spec.shape).copy_(theta)
                        if stats:
                            stats.gather_s += sync() - started
                            stats.bytes_read += spec.nbytes
                        _accumulate(genome, cache, name, theta, weight, work, stats)
                        started = sync()
                        cast = work.get("cast", spec.shape, TORCH_DTYPES[spec.dtype])
                        cast.copy_(weight)
                        if target.type != "cpu":
                            cast = work.get("host", spec.shape, cast.dtype, device="cpu").copy_(cast)
                        writer.write(name, cast)
                        if stats:
                            stats.write_s += sync() - started
                            stats.bytes_written += spec.nbytes
                        bars.advance(bar)
        (temporary / MARKER).write_text(digest)
        _publish(temporary, out, digest)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return out


def _marker(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text()
    except OSError:
        return None


def _publish(temporary: Path, out: Path, digest: str) -> None:
    """Rename `temporary` to `out`, moving aside (then deleting) another genome's checkpoint found there."""
    for _ in range(3):
        if _marker(out) == digest:
            return  # another writer published the same genome meanwhile
        aside = None
        if out.exists():
            aside = out.with_name(f".{out.name}.{uuid.uuid4().hex}.replaced")
            try:
                out.rename(aside)
            except FileNotFoundError:
                aside = None  # someone else moved it first
        try:
            temporary.rename(out)
            return
        except OSError:
            continue  # someone else published in between: look again
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    raise MaterializeError(f"{out}: other processes keep replacing it; could not publish genome {digest}")
