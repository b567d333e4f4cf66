"""Sandbox speed, measured side by side in one run (interleaved, so machine noise hits both sides alike).

    python -m bench.sandbox [--rounds N]

Prints three ratios against raw Docker, with their goals:
  cold start per episode (start + `true` + remove) / `docker run --rm IMAGE true`      goal <= 1.2
  warm pool acquire / cold start per episode                                          goal <= 0.1
  persistent-session round trip of `true` / a fresh `docker exec CONTAINER true`       goal <= 0.3
Raw Docker is timed both through the CLI (what a person types) and the Python SDK (no process start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.engine import docker_client, ensure_engine
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.sandboxes.pool import SandboxPool


async def timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


def run_cli(*argv: str) -> Callable[[], Awaitable[object]]:
    return lambda: asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)


def report(label: str, ours: list[float], raw: dict[str, list[float]], goal: float) -> None:
    mine = statistics.median(ours)
    print(f"{label}: ours {mine * 1000:.1f} ms (median of {len(ours)})")
    for name, samples in raw.items():
        base = statistics.median(samples)
        verdict = "meets" if mine / base <= goal else "misses"
        print(f"    vs {name}: {base * 1000:.1f} ms -> ratio {mine / base:.3f} ({verdict} goal <= {goal})")


async def main(rounds: int) -> None:
    ensure_engine()
    client = docker_client()
    build_images(client, ["os-default"])
    image = image_tag("os-default")

    async def episode() -> None:
        box = await DockerSandbox.start(image)
        await box.exec(["true"])
        await box.stop()

    sdk_run = lambda: asyncio.to_thread(client.containers.run, image, ["true"], remove=True, network_mode="none")  # noqa: E731
    cold, cli_run, sdk = [], [], []
    await episode()  # warm the engine's caches for both sides
    for _ in range(rounds):
        cold.append(await timed(episode))
        cli_run.append(await timed(run_cli("docker", "run", "--rm", "--network", "none", image, "true")))
        sdk.append(await timed(sdk_run))
    report("cold start per episode", cold, {"docker run --rm (CLI)": cli_run, "containers.run (SDK)": sdk}, 1.2)

    acquires = []
    async with SandboxPool(lambda img: DockerSandbox.start(img), warm={image: 2}) as pool:
        for _ in range(rounds):
            await pool.wait_warm()
            started = time.perf_counter()
            box = await pool.acquire(image)
            acquires.append(time.perf_counter() - started)
            await pool.release(box)
    report("warm pool acquire", acquires, {"cold start per episode": cold}, 0.1)

    async with await DockerSandbox.start(image) as box:
        session = await box.open_session()
        trips, cli_exec, sdk_exec = [], [], []
        container = client.containers.get(box.id)
        for _ in range(rounds * 5):
            trips.append(await timed(lambda: session.run("true")))
            cli_exec.append(await timed(run_cli("docker", "exec", box.id, "true")))
            sdk_exec.append(await timed(lambda: asyncio.to_thread(container.exec_run, ["true"])))
        await session.close()
    report("session round trip", trips, {"docker exec (CLI)": cli_exec, "exec_run (SDK)": sdk_exec}, 0.3)

    started = time.perf_counter()
    build_images(client)
    print(f"second `images build` of all images: {time.perf_counter() - started:.2f} s (goal < 2 s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="samples per measurement (default 10)")
    asyncio.run(main(parser.parse_args().rounds))
