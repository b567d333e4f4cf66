"""The warm pool against real containers: instant acquire when warm, fresh container per episode, a hard cap
counted by the engine; its bookkeeping alone (spares per image, expected acquires) on memory sandboxes."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import docker
import pytest

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.errors import SandboxStoppedError
from cycleqd.sandboxes.labels import OWNER_PID
from cycleqd.sandboxes.pool import SandboxPool, StartAhead
from tests.memory_sandbox import MemoryStarter
from tests.sandbox_settings import TEST_LIMITS


def count_our_containers(client: docker.DockerClient) -> int:
    return len(client.containers.list(all=True, sparse=True, filters={"label": f"{OWNER_PID}={os.getpid()}"}))


async def test_warm_acquire_is_instant_and_release_destroys(docker_engine: docker.DockerClient, os_image: str) -> None:
    async with SandboxPool(lambda image: DockerSandbox.start(image, limits=TEST_LIMITS), warm={os_image: 2}) as pool:
        await pool.wait_warm()
        started = time.monotonic()
        box = await pool.acquire(os_image)
        assert time.monotonic() - started < 0.05
        assert (await box.exec(["echo", "ready"])).stdout == "ready\n"
        await pool.release(box)
        assert not docker_engine.containers.list(all=True, filters={"id": box.id})
        await pool.wait_warm()
        again = await pool.acquire(os_image)
        assert again.id != box.id  # never the same container twice
        await pool.release(again)
    assert pool.live == 0


async def test_cap_holds_under_contention(docker_engine: docker.DockerClient, os_image: str) -> None:
    baseline = count_our_containers(docker_engine)
    peak = 0
    done = threading.Event()

    def sample() -> None:  # counted by the engine, on its own thread, not by the pool's bookkeeping
        nonlocal peak
        while not done.is_set():
            peak = max(peak, count_our_containers(docker_engine) - baseline)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    async with SandboxPool(
        lambda image: DockerSandbox.start(image, limits=TEST_LIMITS), warm={os_image: 2}, max_live=3
    ) as pool:

        async def episode(i: int) -> str:
            async with pool.sandbox(os_image) as box:
                result = await box.exec(["echo", str(i)])
                await asyncio.sleep(0.1)
                return result.stdout.strip()

        outputs = await asyncio.gather(*(episode(i) for i in range(10)))
    done.set()
    sampler.join()
    assert outputs == [str(i) for i in range(10)]
    assert 2 <= peak <= 3
    assert count_our_containers(docker_engine) == baseline


async def test_warm_spares_of_one_image_never_starve_another() -> None:
    """The pool's bookkeeping alone (memory sandboxes): two spares of one image fill the cap, yet another image's
    acquire gets a place."""
    starter = MemoryStarter()
    async with SandboxPool(starter, warm={"one": 2}, max_live=2) as pool:
        await pool.wait_warm()
        assert pool.idle("one") == 2
        box = await asyncio.wait_for(pool.acquire("other"), 5)
        assert pool.live <= 2 and starter.live <= 2 and box.image == "other"  # type: ignore[attr-defined]
        await pool.release(box)


async def test_a_released_block_goes_on_at_once_and_its_container_is_gone_by_close(
    docker_engine: docker.DockerClient, os_image: str
) -> None:
    async with SandboxPool(lambda image: DockerSandbox.start(image, limits=TEST_LIMITS), warm={}) as pool:
        async with pool.sandbox(os_image) as box:
            pass
        assert pool.live == 1  # removal runs in the background and keeps its slot until done
        with pytest.raises(SandboxStoppedError):  # yet the sandbox is unusable at once
            await box.exec(["true"])
    assert pool.live == 0
    assert not docker_engine.containers.list(all=True, filters={"id": box.id})


def test_start_ahead_follows_the_observed_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    pace = StartAhead()
    assert pace.spares(32) == 0  # nothing observed: the configured floor rules
    pace.started(0.8)
    for _ in range(40):  # 4 acquires/s for 10 s, each start taking 0.8 s: ~3.2 acquires during one start
        clock[0] += 0.25
        pace.acquired()
    assert pace.spares(32) == 4
    assert pace.spares(2) == 2  # never more than the ceiling
    clock[0] += StartAhead.WINDOW_S + 1  # the stream stopped: no spares beyond the floor
    assert pace.spares(32) == 0


async def test_a_pool_told_the_acquires_to_come_starts_no_spare_beyond_them() -> None:
    starter = MemoryStarter(start_s=0.01)
    pool = SandboxPool(starter, warm={"one": 2}, max_live=4)
    pool.expect("one", 3)
    async with pool:
        for _ in range(3):
            async with pool.sandbox("one") as box:
                assert (await box.exec(["echo", "ok"])).stdout == "ok\n"
            await asyncio.sleep(0.1)  # time for refills that should not come
    assert len(starter.started) == 3 and starter.live == 0


async def test_a_running_sandboxs_command_does_not_wait_behind_a_burst_of_starts(os_image: str) -> None:
    """A run begins with as many starts as episodes at once. Queued with them, a started episode's next engine
    call waited until most of them were through (the first of 120 episodes ended after 13 s at concurrency 64)."""
    burst = 12
    async with await DockerSandbox.start(os_image, limits=TEST_LIMITS) as running:
        finished: list[float] = []

        async def start_one() -> DockerSandbox:
            box = await DockerSandbox.start(os_image, limits=TEST_LIMITS)
            finished.append(time.monotonic())
            return box

        starts = [asyncio.ensure_future(start_one()) for _ in range(burst)]
        await asyncio.sleep(0)  # every start is queued before the command
        result = await running.exec(["true"])
        answered = time.monotonic()
        boxes = await asyncio.gather(*starts)
        await asyncio.gather(*(box.stop() for box in boxes))
    assert result.exit_code == 0
    started_before = sum(t < answered for t in finished)
    assert started_before < burst // 2, f"the command waited for {started_before} of {burst} starts"
