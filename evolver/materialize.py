"""A genome made into a checkpoint laid out exactly like the base (same shards, index, config, tokenizer).

Tensor by tensor, in fp32: θ_base, plus for a matrix one matmul [U_1·g_1 | … | U_K·g_K] @ [V_1ᵀ; …; V_Kᵀ] (experts
with all-zero coefficients skipped; g scales whichever factor is larger) fused into the add (addmm), for a
vector Σ c_e τ_e, plus the Gaussian terms; then cast to the base's dtype and streamed into the shard. The
arithmetic runs on `device` (the GPU when there is one); buffers are reused from tensor to tensor, because on
the CPU fresh multi-megabyte allocations cost page faults comparable to the copies themselves. The folder is
published by rename, with the genome's hash in a marker file, so a second request for the same genome returns
at once.

On a CPU the matmul dominates: 2·m·n·K·r flops per matrix (~450 GFLOP for SmolLM2-135M with three experts),
several times the cost of reading the factors; on a GPU it is milliseconds and reading dominates.
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

from evolver.genome import Genome
from evolver.safetensors_stream import TORCH_DTYPES, StreamWriter
from evolver.svd_cache import SVDCache, default_device

MARKER = ".cycleqd-genome"


class MaterializeError(ValueError):
    """A genome that does not fit the cache, or an output folder that is not ours to replace."""


@dataclass
class MaterializeStats:
    """Where materialisation time goes, filled in when passed to `materialize` (costs a device sync per step).

    gather: the base tensor into fp32 and the scaled factors (reading the mapped files happens here);
    matmul: the one addmm per matrix; write: noise, the cast, and the file writes."""

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


def _accumulate(
    genome: Genome, cache: SVDCache, name: str, out: torch.Tensor, work: _Workspace, stats: MaterializeStats | None
) -> None:
    """out += the genome's fp32 delta for `name` (out already holds θ_base, or zeros)."""
    device = out.device
    coefficients = genome.coefficients[name]
    sync = _syncer(device, stats)
    if name in cache.matrix_names:
        rows = [k for k in range(cache.experts) if bool(torch.any(coefficients[k] != 0))]
        if rows:
            started = sync()
            m, n = out.shape
            r = cache.rank(name)
            # g scales the larger factor (that pass is needed anyway); the smaller one is only copied into the
            # concatenation, or used as is when a single expert contributes.
            scale_u = m >= n
            single = len(rows) == 1
            left = None if single and not scale_u else work.get("left", (m, len(rows) * r))
            right = None if single and scale_u else work.get("right", (len(rows) * r, n))
            for j, k in enumerate(rows):
                u, _, vh = cache.factors(k, name)
                g = coefficients[k].to(device)
                block = slice(j * r, (j + 1) * r)
                if scale_u:
                    torch.mul(u.to(device), g, out=left[:, block])  # type: ignore[index]
                    if single:
                        right = vh.to(device)
                    else:
                        right[block].copy_(vh)  # type: ignore[index]
                else:
                    torch.mul(vh.to(device), g[:, None], out=right[block])  # type: ignore[index]
                    if single:
                        left = u.to(device)
                    else:
                        left[:, block].copy_(u)  # type: ignore[index]
                if stats:
                    stats.bytes_read += (u.numel() + vh.numel()) * 4
            mid = sync()
            out.addmm_(left, right)
            if stats:
                stats.gather_s += mid - started
                stats.matmul_s += sync() - mid
    else:
        started = sync()
        for k in range(cache.experts):
            if coefficients[k] != 0:
                out.add_(cache.task_vector(k, name).to(device), alpha=float(coefficients[k]))
                if stats:
                    stats.bytes_read += out.numel() * 4
        if stats:
            stats.gather_s += sync() - started
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
    _accumulate(genome, cache, name, out, _Workspace(torch.device(device)), None)
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
                        weight = work.get("weight", spec.shape)
                        weight.copy_(base.get_tensor(name))  # bf16 → fp32 into a reused buffer
                        if stats:
                            stats.gather_s += sync() - started
                            stats.bytes_read += spec.nbytes
                        _accumulate(genome, cache, name, weight, work, stats)
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
