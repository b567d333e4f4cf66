"""The inspect_ai side of bench/peer_inspect.py; runs under the bench's own virtual environment (inspect_ai is
never a dependency of the product). Prints one JSON line: {"concurrency": seconds per sample, ...}.

    python inspect_driver.py COMPOSE_FILE SAMPLES CONCURRENCY [CONCURRENCY ...]

inspect_ai refuses Docker engines older than 24.0.6; Debian's docker.io here is 20.10, so the engine check's
required version is lowered to what the engine reports (the Compose check stays as it is). Stepping around the
gate changes nothing of what is timed.
"""

import asyncio
import json
import sys
import time

from inspect_ai.util._sandbox.docker import prereqs
from inspect_ai.util._sandbox.docker.docker import DockerSandboxEnvironment

COMMANDS = [["echo", "hello"], ["ls", "/"], ["cat", "/etc/hostname"]]
TASK = "peer"


def step_around_the_engine_gate() -> None:
    prereqs.validate_docker_engine.__defaults__ = ("20.10.0",)


async def one_sample(config: str) -> None:
    environments = await DockerSandboxEnvironment.sample_init(TASK, config, {})
    try:
        sandbox = environments["default"]
        for argv in COMMANDS:
            result = await sandbox.exec(argv)
            if not result.success:
                raise RuntimeError(f"{argv} failed in inspect_ai's sandbox: {result.stderr}")
    finally:
        await DockerSandboxEnvironment.sample_cleanup(TASK, config, environments, False)


async def gated(gate: asyncio.Semaphore, config: str) -> None:
    async with gate:
        await one_sample(config)


async def main(config: str, samples: int, concurrencies: list[int]) -> None:
    step_around_the_engine_gate()
    await DockerSandboxEnvironment.task_init(TASK, config)
    results = {}
    try:
        await one_sample(config)  # warm-up
        for concurrency in concurrencies:
            gate = asyncio.Semaphore(concurrency)
            started = time.perf_counter()
            await asyncio.gather(*(gated(gate, config) for _ in range(samples)))
            results[concurrency] = (time.perf_counter() - started) / samples
    finally:
        await DockerSandboxEnvironment.task_cleanup(TASK, config, True)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), [int(c) for c in sys.argv[3:]]))
