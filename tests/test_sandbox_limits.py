"""Hostile commands against the default-style limits: fork bombs, memory hogs, network egress."""

from __future__ import annotations

import asyncio
import subprocess

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.limits import SandboxLimits


async def test_fork_bomb_is_contained_by_the_pids_limit(docker_engine, os_image: str) -> None:  # noqa: ANN001
    limits = SandboxLimits(pids=64, command_timeout_s=3.0)
    box = await DockerSandbox.start(os_image, limits=limits)
    try:
        session = await box.open_session()
        await session.run("bomb() { bomb | bomb & }; bomb")
        await asyncio.sleep(2)
        # Counted from the engine's side: inside, the bomb leaves no pid to count with.
        running = len(docker_engine.containers.get(box.id).top()["Processes"])
        assert limits.pids // 2 <= running <= limits.pids
    finally:
        await box.stop()
    assert not docker_engine.containers.list(all=True, filters={"id": box.id})
    # The host is unaffected: it still starts processes at once.
    assert subprocess.run(["true"], timeout=5).returncode == 0  # noqa: ASYNC221


async def test_memory_hog_is_oom_killed_and_reported(os_image: str) -> None:
    limits = SandboxLimits(memory_bytes=128 << 20, command_timeout_s=20.0)
    async with await DockerSandbox.start(os_image, limits=limits) as box:
        hog = "python3 -c \"x = b'x' * (1 << 30); print('survived')\""
        result = await box.exec(hog)
        assert result.oom_killed and result.exit_code == 137 and "survived" not in result.stdout
        session = await box.open_session()
        in_session = await session.run(hog)
        assert in_session.oom_killed and in_session.exit_code == 137
        # A SIGKILL that is not the OOM killer's is not reported as one.
        plain = await session.run("sh -c 'kill -9 $$'")
        assert plain.exit_code == 137 and not plain.oom_killed
        await session.close()


async def test_no_network_by_default(sandbox: DockerSandbox) -> None:
    interfaces = await sandbox.exec(["ls", "/sys/class/net"])
    assert interfaces.stdout.split() == ["lo"]
    # The Debian mirror is a registry this machine may reach; from a sandbox it must not be reachable.
    egress = await sandbox.exec(["curl", "-sS", "--max-time", "5", "http://deb.debian.org/debian/"])
    assert egress.exit_code != 0 and egress.stdout == ""


async def test_limits_are_applied_to_the_container(docker_engine, sandbox: DockerSandbox) -> None:  # noqa: ANN001
    host_config = docker_engine.containers.get(sandbox.id).attrs["HostConfig"]
    limits = sandbox.limits
    assert host_config["NetworkMode"] == "none"
    assert host_config["Memory"] == limits.memory_bytes == host_config["MemorySwap"]
    assert host_config["NanoCpus"] == int(limits.cpus * 1e9)
    assert host_config["PidsLimit"] == limits.pids


def test_default_limits_are_the_documented_ones() -> None:
    limits = SandboxLimits()
    assert (limits.network, limits.memory_bytes, limits.cpus, limits.pids, limits.command_timeout_s) == (
        False,
        1 << 30,
        2.0,
        256,
        30.0,
    )


def test_bad_limits_name_the_field() -> None:
    import pytest

    with pytest.raises(ValueError, match="pids"):
        SandboxLimits(pids=0)
