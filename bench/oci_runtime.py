"""runc against crun on one engine, side by side in one run (interleaved rounds).

    python -m bench.oci_runtime --docker-host unix:///PATH/docker.sock [--image IMAGE] [--rounds N]

The engine must know both runtimes (`"runtimes": {"crun": {"path": "/usr/bin/crun"}}` in its daemon.json):
start a dockerd of your own for this, never reconfigure a shared one. For each runtime: seconds per sandbox
lifecycle through our DockerSandbox (create, start, one exec, remove) at concurrency 1 and 8, and seconds per
one-shot exec on a running sandbox. Prints crun ÷ runc for each (below 1: crun is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import docker

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.limits import SandboxLimits

RUNTIMES = ("runc", "crun")


async def lifecycles(client: docker.DockerClient, image: str, runtime: str | None, concurrency: int) -> float:
    """Seconds per lifecycle, `concurrency` lifecycles at once (runtime None: the engine's default)."""
    limits = SandboxLimits(runtime=runtime)

    async def one() -> None:
        box = await DockerSandbox.start(image, limits=limits, client=client)
        await box.exec(["true"])
        await box.stop()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return (time.perf_counter() - started) / concurrency


async def execs(client: docker.DockerClient, image: str, runtime: str, n: int) -> float:
    box = await DockerSandbox.start(image, limits=SandboxLimits(runtime=runtime), client=client)
    try:
        started = time.perf_counter()
        for _ in range(n):
            await box.exec(["true"])
        return (time.perf_counter() - started) / n
    finally:
        await box.stop()


async def main(host: str, image: str, rounds: int) -> None:
    client = docker.DockerClient(base_url=host)
    print(f"engine {host} ({client.version()['Version']}), image {image}, {rounds} interleaved rounds, medians")
    measures = {
        "lifecycle, concurrency 1": lambda rt: lifecycles(client, image, rt, 1),
        "lifecycle, concurrency 8": lambda rt: lifecycles(client, image, rt, 8),
        "one-shot exec": lambda rt: execs(client, image, rt, 5),
    }
    for label, measure in measures.items():
        samples: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
        await measure("runc")  # warm-up
        for _ in range(rounds):
            for runtime in RUNTIMES:
                samples[runtime].append(await measure(runtime))
        runc, crun = (statistics.median(samples[rt]) for rt in RUNTIMES)
        print(f"{label:<26} runc {runc * 1000:7.1f} ms  crun {crun * 1000:7.1f} ms -> crun/runc {crun / runc:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docker-host", required=True)
    parser.add_argument("--image", default="cycleqd/os-default:latest")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.docker_host, args.image, args.rounds))
