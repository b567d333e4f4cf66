"""Genome size and materialisation speed, measured side by side in one run.

    python -m bench.evolver [--runs N] [--experts K] [--device cpu|cuda] [--base FOLDER] [--work FOLDER]

On the embedded SmolLM2-135M (or --base), K experts are made by adding full-rank noise to the base and the SVD
cache is built (its time is printed; with --work the experts and the cache are kept there and reused). Then:
1. genome bytes ÷ checkpoint weight bytes (goal ≤ 1%); SVD cache bytes per expert ÷ checkpoint (goal ≤ ~1);
2. materialising a child genome (crossover of two experts + SVD mutation along the third, so every expert
   contributes and one needs its Q) ÷ reading the same input bytes (the base's, the experts' tensors and the Q
   materialisation touches) and writing the same output bytes, with no arithmetic (goal ≤ 1.5). Medians of N
   interleaved runs, both from the page cache, plus where materialisation time goes (gather: task vectors, c·τ
   adds, projectors, reading the mapped files included; matmul; write: cast and file writes) and the matmul
   rate;
3. bytes read per child ÷ checkpoint bytes, per contributing expert (goal ≤ ~2, the base's read included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from cycleqd.evolver.checkpoint_files import CheckpointLayout, read_header
from cycleqd.evolver.genome import Genome
from cycleqd.evolver.materialize import MaterializeStats, coefficient_ratios, materialize
from cycleqd.evolver.operators import crossover, svd_mutation
from cycleqd.evolver.safetensors_stream import TORCH_DTYPES, StreamWriter
from cycleqd.evolver.svd_cache import SVDCache, build_svd_cache, default_device

CHUNK = 64 << 20


def make_expert(base: Path, out: Path, seed: int, scale: float) -> Path:
    """A copy of `base` plus Gaussian noise (`scale` × each tensor's std), streamed tensor by tensor."""
    if (out / "config.json").is_file():
        return out
    layout = CheckpointLayout.read(base)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    layout.copy_non_weight_files(staging)
    generator = torch.Generator().manual_seed(seed)
    for shard in layout.shards:
        names = layout.names_in(shard)
        specs = [(n, layout.tensors[n].dtype, layout.tensors[n].shape) for n in names]
        with safe_open(str(base / shard), "pt") as source, StreamWriter(staging / shard, specs, {"format": "pt"}) as w:
            for name in names:
                theta = source.get_tensor(name).float()
                noise = torch.randn(theta.shape, generator=generator) * (theta.std() if theta.numel() > 1 else 1.0)
                w.write(name, (theta + scale * noise).to(TORCH_DTYPES[layout.tensors[name].dtype]))
    staging.rename(out)
    return out


def touched_ranges(cache: SVDCache, genome: Genome) -> list[tuple[Path, int, int]]:
    """(file, begin, end) of every byte materialisation reads: the base's tensors, each contributing expert's
    tensors, and Q, σ of the matrices whose ratios vary (materialize's own rule decides which)."""
    ranges = []
    for shard in cache.layout.shards:
        path = cache.layout.folder / shard
        ranges.append((path, 0, path.stat().st_size))
    for k, expert in enumerate(cache.expert_paths):
        layout = CheckpointLayout.read(expert)
        for name, spec in layout.tensors.items():
            if bool(torch.any(genome.coefficients[name][k] != 0)):
                ranges += tensor_ranges(expert / spec.shard, [name])
        varying = [name for name in cache.matrix_names if uses_q(genome, cache, k, name)]
        ranges += tensor_ranges(cache.files[k], [f"{n}::{part}" for n in varying for part in ("Q", "S")])
    return ranges


def tensor_ranges(path: Path, names: list[str]) -> list[tuple[Path, int, int]]:
    header = read_header(path)
    with open(path, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    return [(path, data_start + header[n]["data_offsets"][0], data_start + header[n]["data_offsets"][1]) for n in names]


def uses_q(genome: Genome, cache: SVDCache, k: int, name: str) -> bool:
    row = genome.coefficients[name][k]
    return bool(torch.any(row != 0)) and coefficient_ratios(row, cache.sigma(k, name))[2]


def read_and_write(ranges: list[tuple[Path, int, int]], out_bytes: int, out: Path, buffer: bytearray) -> float:
    """Seconds to read those byte ranges into a reused buffer and write `out_bytes` to a new file."""
    view = memoryview(buffer)
    started = time.perf_counter()
    handles: dict[Path, int] = {}
    try:
        for path, begin, end in ranges:
            fd = handles.setdefault(path, os.open(path, os.O_RDONLY))
            while begin < end:
                count = os.preadv(fd, [view[: min(CHUNK, end - begin)]], begin)
                begin += count
    finally:
        for fd in handles.values():
            os.close(fd)
    with open(out, "wb") as f:
        left = out_bytes
        while left:
            left -= f.write(view[: min(CHUNK, left)])
    elapsed = time.perf_counter() - started
    out.unlink()
    return elapsed


def matmul_flops(cache: SVDCache, genome: Genome) -> int:
    """2·r³ (the projector) + 2·m·n·r (its product with τ) per matrix per expert whose ratios vary."""
    total = 0
    for name in cache.matrix_names:
        m, n = cache.shape(name)
        r = cache.rank(name)
        total += sum(2 * r**3 + 2 * m * n * r for k in range(cache.experts) if uses_q(genome, cache, k, name))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--base", type=Path, help="checkpoint folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--work", type=Path, help="keep experts and SVD cache here and reuse them (default: temp)")
    args = parser.parse_args()
    if args.base is None:
        from cycleqd.serving.default_model import default_checkpoint

        args.base = default_checkpoint().path
    device = args.device or default_device()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-evolver-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        experts = [make_expert(args.base, work / f"expert-{k}", seed=k, scale=0.05) for k in range(args.experts)]
        started = time.perf_counter()
        cache = build_svd_cache(args.base, experts, work / "cache", device=device, progress=False)
        print(f"base {args.base.name}: {cache.layout.weight_bytes / 2**20:.0f} MiB of weights, {args.experts} experts")
        print(f"SVD cache: {time.perf_counter() - started:.1f} s (0 if reused from --work), "
              f"{cache.nbytes / 2**20:.0f} MiB on disk; per expert ÷ checkpoint weights = "
              f"{cache.nbytes / args.experts / cache.layout.weight_bytes:.2f} (goal <= ~1)")  # fmt: skip

        child = crossover(Genome.expert(cache, 0), Genome.expert(cache, 1 % args.experts), 1.01, 0.99)
        child = svd_mutation(child, cache, args.experts - 1, 0.1, seed=1)
        weight_bytes = cache.layout.weight_bytes
        print(f"genome {child.nbytes / 2**20:.2f} MiB / checkpoint weights {weight_bytes / 2**20:.0f} MiB = "
              f"{child.nbytes / weight_bytes:.3%} (goal <= 1%)")  # fmt: skip

        ranges = touched_ranges(cache, child)
        in_bytes = sum(end - begin for _, begin, end in ranges)
        out_bytes = sum(p.stat().st_size for p in cache.layout.folder.iterdir() if p.is_file())
        buffer = bytearray(CHUNK)
        ours, baseline, stats = [], [], []
        for run in range(args.runs):
            out = work / "child"
            shutil.rmtree(out, ignore_errors=True)
            stats.append(MaterializeStats())
            started = time.perf_counter()
            materialize(child, cache, out, device=device, stats=stats[-1])
            ours.append(time.perf_counter() - started)
            shutil.rmtree(out)
            baseline.append(read_and_write(ranges, out_bytes, work / "copy.bin", buffer))
            print(f"run {run + 1}: materialise {ours[-1]:.2f} s, read+write the same bytes {baseline[-1]:.2f} s")
        mine, theirs = statistics.median(ours), statistics.median(baseline)
        contributing = sum(any(bool(torch.any(t[k] != 0)) for t in child.coefficients.values())
                           for k in range(cache.experts))  # fmt: skip
        read = statistics.median(s.bytes_read for s in stats)
        print(f"input {in_bytes / 2**20:.0f} MiB (base, experts' tensors, Q of the mutated expert), output "
              f"{out_bytes / 2**20:.0f} MiB")  # fmt: skip
        print(
            f"bytes read per child ÷ checkpoint weights = {read / weight_bytes:.2f} for {contributing} contributing "
            f"experts = {read / weight_bytes / contributing:.2f} per expert (goal <= ~2), base included"
        )
        print(f"materialisation / read+write of the same bytes = {mine:.2f} s / {theirs:.2f} s = {mine / theirs:.2f} "
              f"(goal <= 1.5; device {device}, {torch.get_num_threads()} CPU threads)")  # fmt: skip
        middle = stats[ours.index(mine)] if mine in ours else stats[0]  # the median run's own parts add up
        gather, matmul, write = middle.gather_s, middle.matmul_s, middle.write_s
        rest = mine - gather - matmul - write
        flops = matmul_flops(cache, child)
        print(f"breakdown (the median run): gather {gather:.2f} s (task vectors, c·τ adds, page-ins), "
              f"matmul {matmul:.2f} s ({flops / 1e9:.0f} GFLOP at {flops / matmul / 1e9:.0f} GFLOP/s), "
              f"cast+write {write:.2f} s, other {rest:.2f} s")  # fmt: skip
        # On a GPU the matmul is milliseconds; this is the part a faster matmul cannot remove.
        print(f"materialisation without the matmul / read+write of the same bytes = {(mine - matmul) / theirs:.2f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
