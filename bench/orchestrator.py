"""Orchestrator throughput and store commits, measured in one run.

    python -m bench.orchestrator [--latency-ms MS] [--episodes-per-slot K] [--concurrency C ...] [--rounds R]

1. Episodes/s of `cycleqd eval`'s orchestrator on real sandboxes (built-in OS dev tasks) against the
   fixed-latency OpenAI-compatible server in bench/, at 8, 32 and 64 concurrent episodes, divided by
   - the engine's own ceiling, measured right after at the same concurrency: raw `docker run --rm --network none
     IMAGE true` lifecycles/s (the CLI, as a person would type it), as many as the episodes just played.
     Every episode needs one container lifecycle, so no harness on fresh containers beats it. Goal: >= 0.9.
     Ours and the ceiling alternate for R rounds and the median ratio is printed: a virtual machine's speed
     drifts by a third from one minute to the next.
   - the ideal (concurrency / model latency: what a harness with free sandboxes would reach).
   Episodes/s at 64: goal >= 6 (2x the 3.0 measured on the landed main).
2. SQLite episode commits/s through the store, one writer and four concurrent writers (one engine each).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.db.store import Store
from cycleqd.eval.orchestrator import EvalSettings, Orchestrator
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.sandboxes.engine import docker_client, ensure_engine
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.serving.client import ClientSettings
from cycleqd.serving.external import ExternalManager
from cycleqd.serving.model_ref import ExternalEndpoint
from cycleqd.serving.server_process import free_port


async def throughput(latency_s: float, per_slot: int, folder: Path, concurrencies: list[int], rounds: int) -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fixed_latency_server", "--port", str(port), "--latency-ms", str(latency_s * 1000)
    )
    try:
        await asyncio.sleep(2)
        endpoint = ExternalEndpoint(f"http://127.0.0.1:{port}/v1", "fixed")
        tasks = load_eval_tasks(["os"], "builtin", "dev", None)
        for concurrency in concurrencies:
            ratios = []
            for round_ in range(rounds):  # alternated, so that a drifting host weighs on both sides alike
                store = open_store(folder / f"bench-{concurrency}-{round_}.db")
                rate = await episodes_per_s(store, endpoint, tasks, concurrency, per_slot)
                ceiling = await engine_ceiling(image_tag("os-default"), concurrency, rate.episodes)
                ratios.append(rate.per_s / ceiling)
                ideal = concurrency / latency_s
                print(f"concurrency {concurrency:>2}, round {round_ + 1}: {rate.episodes} episodes in "
                      f"{rate.seconds:.1f} s = {rate.per_s:.2f} ep/s; engine ceiling {ceiling:.2f} lifecycles/s -> "
                      f"ours/ceiling {rate.per_s / ceiling:.2f}; ideal {ideal:.1f} ep/s -> ours/ideal "
                      f"{rate.per_s / ideal:.3f}", flush=True)  # fmt: skip
            print(f"concurrency {concurrency:>2}: ours/ceiling median of {rounds} rounds "
                  f"{statistics.median(ratios):.2f} (goal >= 0.9)", flush=True)  # fmt: skip
    finally:
        server.terminate()
        await server.wait()


@dataclass(frozen=True)
class Rate:
    episodes: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.episodes / self.seconds


async def episodes_per_s(
    store: Store, endpoint: ExternalEndpoint, tasks: list, concurrency: int, per_slot: int
) -> Rate:
    run = store.create_run("bench", {})
    repeats = max(1, concurrency * per_slot // len(tasks))
    settings = EvalSettings.sized(concurrency=concurrency, repeats=repeats, max_tokens=16, rounds=5)  # as `eval`'s
    async with ExternalManager(endpoint, ClientSettings(max_concurrency=concurrency)) as manager:
        await manager.serve(endpoint)
        model_id = store.model_id(endpoint.identity(), endpoint.label)
        orchestrator = Orchestrator(store, run.id, manager, model_id, settings)
        started = time.perf_counter()
        await orchestrator.run(tasks)
        elapsed = time.perf_counter() - started
    return Rate(len(store.episodes(run.id)), elapsed)


async def engine_ceiling(image: str, concurrency: int, lifecycles: int) -> float:
    """Raw `docker run --rm IMAGE true` lifecycles per second, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    argv = ["docker", "run", "--rm", "--network", "none", image, "true"]

    async def one() -> None:
        async with gate:
            process = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if await process.wait() != 0:
                raise RuntimeError(f"{' '.join(argv)} failed")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(lifecycles)))
    return lifecycles / (time.perf_counter() - started)


def commits(folder: Path) -> None:
    path = folder / "commits.db"
    store = open_store(path)
    run = store.create_run("bench", {})
    model = store.model_id("bench", "bench")
    task_ids = [store.task_id("os", "bench", "dev", f"t{i}", "h") for i in range(4)]

    def writer(task_id: int, n: int) -> None:
        mine = open_store(path)
        for repeat in range(n):
            mine.record_episode(
                EpisodeRecord(
                    run.id,
                    model,
                    task_id,
                    repeat,
                    "completed",
                    1.0,
                    transcript=[{"role": "user", "content": "x" * 2000}],
                )
            )

    started = time.perf_counter()
    writer(task_ids[0], 300)
    single = 300 / (time.perf_counter() - started)
    threads = [threading.Thread(target=writer, args=(t, 300)) for t in task_ids[1:]]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    multi = 900 / (time.perf_counter() - started)
    print(f"SQLite episode commits: one writer {single:.0f}/s, three concurrent writers {multi:.0f}/s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=2000.0)
    parser.add_argument("--episodes-per-slot", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--rounds", type=int, default=3, help="ours and the ceiling, alternated (median ratio)")
    args = parser.parse_args()
    ensure_engine()
    build_images(docker_client(), ["os-default", "os-packages"])
    with tempfile.TemporaryDirectory() as folder:
        commits(Path(folder))
        asyncio.run(
            throughput(args.latency_ms / 1000, args.episodes_per_slot, Path(folder), args.concurrency, args.rounds)
        )


if __name__ == "__main__":
    main()
