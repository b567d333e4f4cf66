"""Where an OS episode's sandbox time goes, step by step, at concurrency 1 (medians over rounds).

    python -m bench.episode_steps [--rounds N]

The steps are those of envs/os/interaction.py on the os-default image: create, start, one init script in a shell
of its own, the writable layer and /etc/passwd as the set-up left them (envs/os/trust.py: read from the host),
opening the persistent shell, the `start` command and two agent commands typed into it, closing the shell, one
check exec with every agent process stopped and its opens witnessed, the layer again and the judgement of what the
check reached, and removal. The shells are the main process's, reached by attaching (no exec); the workdir probe
runs once per image, not per episode, so it is not here. Each is timed on its own (wall clock; on a 2-core machine
the engine's CPU is most of it), and the share of the episode each takes is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable

from cycleqd.envs.os.trust import CHECK_ENV, Named, TrustJudge
from cycleqd.sandboxes.contract import CheckEvidence, LayerScan
from cycleqd.sandboxes.docker_sandbox import DockerSandbox, create_container
from cycleqd.sandboxes.engine import docker_client, ensure_engine
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.sandboxes.limits import SandboxLimits


async def one_episode(client, image: str, times: dict[str, list[float]]) -> None:  # noqa: ANN001
    async def step(name: str, work: Awaitable[object]) -> object:
        started = time.perf_counter()
        result = await work
        times[name].append(time.perf_counter() - started)
        return result

    limits = SandboxLimits()
    container = await step("create + start", asyncio.to_thread(create_container, client, image, limits, None, "/root"))
    box = DockerSandbox(client, container, limits, idle_main=True)  # type: ignore[arg-type]

    async def init_in_own_shell() -> None:  # as envs/os/interaction.py runs an init script
        shell = await box.open_session(workdir="/root")
        await shell.run("set -o pipefail; bash -c 'echo hi > /root/x' </dev/null 2>&1 | cat")
        await shell.close()

    await step("init script (own shell)", init_in_own_shell())
    baseline = await step("layer after set-up", box.layer())
    passwd = await step("passwd after set-up", box.file_text("/etc/passwd"))
    session = await step("open shell session", box.open_session(workdir="/root"))
    await step("session: start command", session.run("sleep 0 &"))  # type: ignore[attr-defined]
    await step("session: 2 agent commands", session.run("ls; cat x"))  # type: ignore[attr-defined]
    await step("close session", session.close())  # type: ignore[attr-defined]

    async def witnessed_check() -> tuple[CheckEvidence, LayerScan]:
        async with box.witness_checks() as evidence:
            stopped = await box.layer()
            await box.exec(["bash", "-c", "test -f /root/x"], workdir="/root", env=CHECK_ENV)
        return evidence, stopped

    evidence, stopped = await step("stop, layer, check witnessed", witnessed_check())  # type: ignore[misc]
    judge = TrustJudge(box, Named.from_sources(["test -f /root/x"], "/root"), passwd)  # type: ignore[arg-type]
    await step("judge what it reached", judge.untrusted(baseline, stopped, evidence))  # type: ignore[arg-type]
    await step("remove (force)", box.stop())


async def main(rounds: int) -> None:
    ensure_engine()
    client = docker_client()
    build_images(client, ["os-default"])
    image = image_tag("os-default")
    times: dict[str, list[float]] = defaultdict(list)
    await one_episode(client, image, defaultdict(list))  # warm-up
    for _ in range(rounds):
        await one_episode(client, image, times)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    total = sum(value for name, value in medians.items() if not name.startswith("("))
    print(f"OS episode sandbox steps, medians of {rounds} rounds (sum {total * 1000:.0f} ms):")
    for name, value in medians.items():
        print(f"  {name:<28} {value * 1000:7.1f} ms  {value / total:6.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds))
