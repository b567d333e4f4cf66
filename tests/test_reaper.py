"""No container outlives its owner: SIGKILLed owners are reaped, exiting owners clean up after themselves."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import docker
import pytest

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.labels import OWNER_PID
from cycleqd.sandboxes.reaper import reap_orphans

OWNER = textwrap.dedent(
    """
    import asyncio, sys, time
    from cycleqd.sandboxes.docker_sandbox import DockerSandbox

    async def main():
        box = await DockerSandbox.start(sys.argv[1])
        print(box.id, flush=True)
        if sys.argv[2] == "hang":
            time.sleep(600)
        elif sys.argv[2] == "interrupt":
            raise KeyboardInterrupt

    asyncio.run(main())
    """
)


def start_owner(image: str, mode: str) -> tuple[subprocess.Popen[str], str]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, image, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    container_id = owner.stdout.readline().strip()
    assert container_id, owner.stderr.read() if owner.stderr else "owner printed nothing"
    return owner, container_id


def exists(client: docker.DockerClient, container_id: str) -> bool:
    return bool(client.containers.list(all=True, filters={"id": container_id}))


@pytest.mark.slow
async def test_sigkilled_owner_is_reaped_and_live_owners_are_not(
    docker_engine: docker.DockerClient, os_image: str, sandbox: DockerSandbox
) -> None:
    owner, orphan = start_owner(os_image, "hang")
    assert docker_engine.containers.get(orphan).labels[OWNER_PID] == str(owner.pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    assert exists(docker_engine, orphan)  # SIGKILL gives no chance to clean up

    reaped = reap_orphans(docker_engine)

    assert not exists(docker_engine, orphan)
    assert exists(docker_engine, sandbox.id)  # ours: this process is alive
    assert sandbox.name not in reaped


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "interrupt"])
def test_owner_removes_its_containers_when_it_ends(
    docker_engine: docker.DockerClient, os_image: str, mode: str
) -> None:
    owner, container_id = start_owner(os_image, mode)
    owner.wait(timeout=30)
    assert not exists(docker_engine, container_id)
