"""vLLM's CPU build as the evolver uses it, measured side by side in one run: an in-place swap against a restart
(each verified by the manager's fingerprint), the CPU an idle server takes, and whether greedy answers depend on
the batch they were decoded in.

    python -m bench.vllm_cpu [--swaps N]

- swaps: the default model and a perturbed copy served alternately, N times in place, then N times by restarts
  (the manager's own fallback path); prints the median of each and the ratio restart ÷ in place;
- idle: CPU seconds the server's process tree uses in the 10 s after a burst of 8 requests, and in the next 10 s,
  for vLLM and for transformers serve;
- determinism: the same 8 conversations answered one at a time and all at once (greedy, 64 tokens): how many of
  the 8 answers are identical.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cycleqd.serving.default_model import default_checkpoint
from cycleqd.serving.manager import ProcessServerManager
from cycleqd.serving.model_ref import validate_checkpoint
from cycleqd.serving.transformers_serve import TransformersServeManager
from cycleqd.serving.vllm_serve import SwapMethod, VLLMManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ lends its perturbed checkpoint maker
from bench.serving_cpu import conversations  # noqa: E402
from tests.checkpoints import perturbed_checkpoint  # noqa: E402


def tree_cpu_seconds(manager: ProcessServerManager) -> float:
    """User + system CPU seconds of the server's process group so far."""
    from cycleqd.serving.server_process import group_pids

    assert manager.process is not None and manager.process.pid is not None
    ticks = 0
    for pid in group_pids(manager.process.pid) | {manager.process.pid}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / 100


async def idle_cpu(manager: ProcessServerManager) -> tuple[float, float]:
    await asyncio.gather(*(manager.chat(c, max_tokens=32) for c in conversations(8)))
    marks = [tree_cpu_seconds(manager)]
    for _ in range(2):
        await asyncio.sleep(10)
        marks.append(tree_cpu_seconds(manager))
    return marks[1] - marks[0], marks[2] - marks[1]


async def swaps(manager: VLLMManager, refs: list, n: int) -> tuple[list[float], list[float]]:
    in_place, restarts = [], []
    for i in range(n):
        await manager.serve(refs[i % 2])
        assert manager.last_method is SwapMethod.RELOAD_IN_PLACE, manager.fallbacks
        in_place.append(manager.last_swap_s)
    manager.swap_method = SwapMethod.RESTART
    for i in range(n):
        await manager.serve(refs[(i + 1) % 2])
        restarts.append(manager.last_swap_s)
    manager.swap_method = SwapMethod.RELOAD_IN_PLACE
    return in_place, restarts


async def main(n: int) -> None:
    base = default_checkpoint()
    with tempfile.TemporaryDirectory() as folder:
        other = validate_checkpoint(perturbed_checkpoint(base.path, Path(folder) / "other", 1, 0.1))
        vllm = VLLMManager()
        started = time.perf_counter()
        await vllm.serve(base)
        print(f"{vllm.decoding()}: up in {time.perf_counter() - started:.1f} s")
        try:
            in_place, restarts = await swaps(vllm, [other, base], n)
            a, b = statistics.median(in_place), statistics.median(restarts)
            print(f"swap in place {a:.2f} s, restart {b:.1f} s (medians of {n}, each verified) -> restart / in place "
                  f"{b / a:.0f}x; fallbacks: {len(vllm.fallbacks)}")  # fmt: skip
            one = [(await vllm.chat(c, max_tokens=64)).text for c in conversations(8)]
            together = [r.text for r in await asyncio.gather(*(vllm.chat(c, max_tokens=64) for c in conversations(8)))]
            same = sum(x == y for x, y in zip(one, together, strict=True))
            print(f"greedy answers identical at concurrency 1 and 8: {same} of 8")
            busy, after = await idle_cpu(vllm)
        finally:
            await vllm.stop()
        async with TransformersServeManager() as transformers:
            await transformers.serve(base)
            t_busy, t_after = await idle_cpu(transformers)
        print(f"idle CPU (core-seconds in 10 s after a burst, then the next 10 s): vLLM {busy:.2f}, {after:.2f}; "
              f"transformers {t_busy:.2f}, {t_after:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swaps", type=int, default=5)
    asyncio.run(main(parser.parse_args().swaps))
