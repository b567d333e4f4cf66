"""The least time fp32 greedy decoding on this machine needs for a stored run: a floor under any server.

    python -m bench.decode_floor RUN [--db PATH] [--checkpoint DIR] [--goal EPISODES_PER_S]

An episode is a chain: each reply is decoded token by token, and the next round's prompt exists only once the
reply before it is done. So a run lasts at least as long as its longest chain of generated tokens, each token one
forward step at batch 1, whatever the batching (the other episodes end first and leave it alone). A step at batch 1
reads every weight once: it cannot take less than the checkpoint's bytes ÷ the memory bandwidth. Both are measured
here, side by side: the bandwidth (a reduction over a 256 MiB tensor, on one thread and on every core; the best)
and, beside it, the time of the model's own matrix products at batch 1 (every weight matrix once, through
`torch.nn.functional.linear` as the model calls it). Prints the run's longest chain, the floor it implies as
episodes/s beside the run's measured episodes/s, and the goal.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open

from cycleqd.db import open_store
from cycleqd.serving.default_model import default_checkpoint

BANDWIDTH_BYTES = 256 << 20
REPEATS = 5


def read_bandwidth(threads: int) -> float:
    """Bytes per second a reduction reads on `threads` threads (best of REPEATS)."""
    torch.set_num_threads(threads)
    data = torch.ones(BANDWIDTH_BYTES // 4)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best


def fp32_weights(checkpoint: Path) -> list[torch.Tensor]:
    tensors = []
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.extend(f.get_tensor(name).float() for name in f.keys())  # noqa: SIM118 - safe_open has no iter
    return tensors


def linear_step_s(weights: list[torch.Tensor], threads: int) -> float:
    """One pass of every weight matrix at batch 1 (best of REPEATS): what a decode step's products cost at least.
    A tied embedding is counted once, as the output layer it is at each step."""
    torch.set_num_threads(threads)
    matrices = [w for w in weights if w.dim() == 2]
    inputs = [torch.randn(1, w.shape[1]) for w in matrices]
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for x, w in zip(inputs, matrices, strict=True):
            torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - started)
    return best


def longest_chain(db: Path, prefix: str) -> tuple[str, int, int, float, int]:
    """(run id, the most tokens one episode generated, its rounds, the run's measured episodes/s, episodes)."""
    store = open_store(db, create=False)
    matches = store.runs_matching(prefix)
    if len(matches) != 1:
        raise ValueError(f"{db}: run {prefix!r} matches {len(matches)} runs; give one id or unique prefix")
    episodes = store.episodes(matches[0])
    if not episodes:
        raise ValueError(f"{db}: run {matches[0]} has no episodes")
    longest = max(episodes, key=lambda e: e.completion_tokens)
    span = (max(e.finished_at for e in episodes) - min(e.started_at for e in episodes)).total_seconds()
    return matches[0], longest.completion_tokens, longest.rounds, len(episodes) / span, len(episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run id or unique prefix (`cycleqd runs`)")
    parser.add_argument("--db", type=Path, default=Path("cycleqd.db"))
    parser.add_argument("--checkpoint", type=Path, help="the run's checkpoint folder (default: the embedded SmolLM2)")
    parser.add_argument("--goal", type=float, default=0.3, help="episodes/s asked for (issue 20: 0.3)")
    args = parser.parse_args()
    if not args.db.is_file():
        parser.exit(2, f"{args.db}: no such store; give --db\n")
    try:
        run, tokens, rounds, measured, count = longest_chain(args.db, args.run)
    except ValueError as exc:
        parser.exit(2, f"{exc}\n")
    checkpoint = args.checkpoint or default_checkpoint().path
    weights = fp32_weights(checkpoint)
    weight_bytes = sum(w.numel() * 4 for w in weights if w.dim() == 2)
    cores = len(os.sched_getaffinity(0))
    bandwidth = max(read_bandwidth(1), read_bandwidth(cores))
    products = min(linear_step_s(weights, 1), linear_step_s(weights, cores))
    floor_step = weight_bytes / bandwidth
    print(f"run {run}: {count} episodes at {measured:.3f} episodes/s measured")
    print(f"longest chain: {tokens:,} generated tokens over {rounds} rounds, decoded one after another")
    print(f"weights: {weight_bytes / 1e6:.0f} MB in fp32; read bandwidth {bandwidth / 1e9:.1f} GB/s (best of 1 and "
          f"{cores} threads) -> a step reads them in >= {floor_step * 1000:.1f} ms")  # fmt: skip
    print(f"the model's matrix products at batch 1: {products * 1000:.1f} ms a step (best of 1 and {cores} threads)")
    for name, step in (("bandwidth floor", floor_step), ("matrix products", products)):
        least = tokens * step
        print(f"{name}: the run needs >= {least:.0f} s -> at most {count / least:.3f} episodes/s "
              f"(goal {args.goal}: {'reachable' if count / least >= args.goal else 'out of reach'})")  # fmt: skip


if __name__ == "__main__":
    main()
