"""Where an OS episode's sandbox time goes, step by step, at concurrency 1 (medians over rounds).

    python -m bench.episode_steps [--rounds N] [--engine-changes]

The steps are those of envs/os_interaction.py on the os-default image: create, start, one init script in a shell
of its own, the toolchain as the set-up left it (envs/os_tamper.py: read from the container's storage layer),
opening the persistent shell, the `start` command and two agent commands typed into it, closing the shell, one
check exec, the toolchain again (what the agent changed there), and removal. `--engine-changes` also times the
engine's own changes list (`docker diff`), the alternative to reading the layer, outside the sum. The shells are
the main process's, reached by attaching (no exec); the workdir probe runs once per image, not per episode, so it
is not here. Each is timed on its own (wall clock; on a 2-core machine the engine's CPU is most of it), and the
share of the episode each takes is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable

from cycleqd.envs.os_tamper import CHECK_ENV, tampered_paths, toolchain_state
from cycleqd.sandboxes.docker_sandbox import DockerSandbox, create_container
from cycleqd.sandboxes.engine import docker_client, ensure_engine
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.sandboxes.limits import SandboxLimits


async def one_episode(client, image: str, times: dict[str, list[float]], engine_changes: bool) -> None:  # noqa: ANN001
    async def step(name: str, work: Awaitable[object]) -> object:
        started = time.perf_counter()
        result = await work
        times[name].append(time.perf_counter() - started)
        return result

    limits = SandboxLimits()
    container = await step("create + start", asyncio.to_thread(create_container, client, image, limits, None, "/root"))
    box = DockerSandbox(client, container, limits, idle_main=True)  # type: ignore[arg-type]

    async def init_in_own_shell() -> None:  # as envs/os_interaction.py runs an init script
        shell = await box.open_session(workdir="/root")
        await shell.run("set -o pipefail; bash -c 'echo hi > /root/x' </dev/null 2>&1 | cat")
        await shell.close()

    await step("init script (own shell)", init_in_own_shell())
    baseline = await step("toolchain after set-up", toolchain_state(box))
    session = await step("open shell session", box.open_session(workdir="/root"))
    await step("session: start command", session.run("sleep 0 &"))  # type: ignore[attr-defined]
    await step("session: 2 agent commands", session.run("ls; cat x"))  # type: ignore[attr-defined]
    await step("close session", session.close())  # type: ignore[attr-defined]
    await step("exec: one check script", box.exec(["bash", "-c", "test -f /root/x"], workdir="/root", env=CHECK_ENV))
    await step("toolchain after checks", tampered_paths(box, baseline))  # type: ignore[arg-type]
    if engine_changes:
        await step("(engine's changes list)", asyncio.to_thread(client.api.diff, container.id))
    await step("remove (force)", box.stop())


async def main(rounds: int, engine_changes: bool) -> None:
    ensure_engine()
    client = docker_client()
    build_images(client, ["os-default"])
    image = image_tag("os-default")
    times: dict[str, list[float]] = defaultdict(list)
    await one_episode(client, image, defaultdict(list), engine_changes)  # warm-up
    for _ in range(rounds):
        await one_episode(client, image, times, engine_changes)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    total = sum(value for name, value in medians.items() if not name.startswith("("))
    print(f"OS episode sandbox steps, medians of {rounds} rounds (sum {total * 1000:.0f} ms):")
    for name, value in medians.items():
        print(f"  {name:<28} {value * 1000:7.1f} ms  {value / total:6.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engine-changes", action="store_true", help="also time the engine's changes list")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.engine_changes))
