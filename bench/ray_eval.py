"""Episodes/s of `cycleqd eval --ray` with 1 and 2 worker nodes against `cycleqd eval` in one process, side by
side in one run, on real sandboxes (built-in OS dev tasks) against the fixed-latency server in bench/.

    python -m bench.ray_eval [--latency-ms MS] [--repeats N] [--concurrency C]

Each figure is the eval command's own wall time for its episodes (the JSON's `wall_s`: from the first episode's
start to the last one's end, db/run_time.py; not the Python start-up, serving or Ray's cluster start). The local
cluster is a head plus worker nodes started with `ray start` on this machine (tests/ray_cluster.py), one
`cycleqd_slot` each; every node runs its own sandbox pool on this machine's one Docker engine, so on a small
machine the nodes compete for the same cores and the gain is bounded by them. Ray's per-episode overhead is
measured apart: the round trip of one `play` call to a slot actor that returns at once, beside a local coroutine
call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script: tests/ lends its local cluster
from cycleqd.serving.server_process import free_port  # noqa: E402
from tests.ray_cluster import start_cluster  # noqa: E402

CLI = "import sys; from cycleqd.cli import main; sys.argv[0] = 'cycleqd'; main()"


def eval_run(model: str, db: Path, repeats: int, concurrency: int, *extra: str) -> tuple[int, float]:
    command = [sys.executable, "-c", CLI, "eval", "--model", model, "--tasks", "os", "--repeats", str(repeats),
               "--concurrency", str(concurrency), "--db", str(db), "--json", *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    payload = json.loads(done.stdout)
    return sum(r["episodes"] for r in payload["results"]), max(r["wall_s"] for r in payload["results"])


class Echo:
    """A slot that returns at once: what a round trip through Ray costs beside the episode itself."""

    async def play(self, task: object, key: tuple) -> tuple:
        return key


def ray_overhead(address: str, calls: int = 300) -> tuple[float, float]:
    import ray

    from cycleqd.ray.backend import SlotPool, connect

    connect(address)

    async def measure() -> tuple[float, float]:
        pool = SlotPool(Echo, (), 1)
        await pool.actors[0].__ray_ready__.remote()
        started = time.perf_counter()
        for i in range(calls):
            await pool.run(0, lambda actor, i=i: actor.play.remote(None, ("run", 1, i, 0)))
        remote = (time.perf_counter() - started) / calls
        local = Echo()
        started = time.perf_counter()
        for i in range(calls):
            await local.play(None, ("run", 1, i, 0))
        here = (time.perf_counter() - started) / calls
        await pool.close()
        return remote, here

    try:
        return asyncio.run(measure())
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--repeats", type=int, default=2, help="Episodes per task (21 OS dev tasks).")
    parser.add_argument("--concurrency", type=int, default=4, help="Episodes at once per slot (and in one process).")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.fixed_latency_server", "--port", str(port),
                               "--latency-ms", str(args.latency_ms)], cwd=ROOT)  # fmt: skip
    model = f"http://127.0.0.1:{port}/v1#fixed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        time.sleep(2)
        with tempfile.TemporaryDirectory() as folder:
            n, wall = eval_run(model, Path(folder) / "here.db", args.repeats, args.concurrency)
            single = n / wall
            print(f"one process:   {n} episodes in {wall:.1f} s = {single:.2f} ep/s", flush=True)
            for workers in (1, 2):
                cluster = start_cluster(workers, env)
                try:
                    n, wall = eval_run(model, Path(folder) / f"ray{workers}.db", args.repeats, args.concurrency,
                                       "--ray", cluster.address)  # fmt: skip
                    if workers == 1:
                        remote, local = ray_overhead(cluster.address)
                finally:
                    cluster.stop()
                print(f"ray, {workers} worker(s): {n} episodes in {wall:.1f} s = {n / wall:.2f} ep/s "
                      f"-> {n / wall / single:.2f} x one process", flush=True)  # fmt: skip
            print(f"Ray's round trip per episode call: {remote * 1000:.2f} ms (a local call: {local * 1e6:.1f} µs)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
