"""A warm pool of sandboxes: containers started ahead per image so that an episode gets one at once.

`acquire(image)` hands over a warm sandbox if one is ready, otherwise starts one. `release(sandbox)` destroys
it (episodes never share a container; `sandbox(image)` does it in the background, off the episode's path) and
the pool refills in the background. A global cap bounds the live
containers, warm ones included; when an acquire needs a slot and the cap is reached, an idle warm container of
another image is given up first, so warm spares can never starve real work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from cycleqd.sandboxes.contract import Sandbox
from cycleqd.sandboxes.errors import PoolClosedError

log = logging.getLogger(__name__)

SandboxFactory = Callable[[str], Awaitable[Sandbox]]


class SandboxPool:
    def __init__(self, factory: SandboxFactory, *, warm: dict[str, int], max_live: int = 64) -> None:
        """`factory(image)` starts one sandbox; `warm` says how many spares to keep per image."""
        if max_live < 1:
            raise ValueError(f"max_live must be at least 1, got {max_live}")
        self._factory = factory
        self._warm_target = dict(warm)
        self.max_live = max_live
        self._idle: dict[str, list[Sandbox]] = {image: [] for image in warm}
        self._live = 0
        self._starting: dict[str, int] = {image: 0 for image in warm}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._pace: dict[str, StartAhead] = {image: StartAhead() for image in warm}
        self._expected: dict[str, int] = {}  # acquires still to come, per image, where the caller said

    @property
    def live(self) -> int:
        """Containers this pool holds or has handed out (starting ones included)."""
        return self._live

    def idle(self, image: str) -> int:
        return len(self._idle.get(image, []))

    def expect(self, image: str, acquires: int) -> None:
        """`acquires` more acquires of `image` are coming (a run's episodes): spares beyond those still to come
        would be started only to be removed, a whole container lifecycle each."""
        self._expected[image] = self._expected.get(image, 0) + acquires

    def _spares_wanted(self, image: str) -> int:
        wanted = max(self._warm_target[image], self._pace[image].spares(self.max_live // 2))
        return min(wanted, self._expected[image]) if image in self._expected else wanted

    async def start(self) -> None:
        """Begin filling the warm spares; returns at once."""
        for image in self._warm_target:
            self._schedule_refill(image)

    async def wait_warm(self) -> None:
        """Wait until every image has its spares (or the cap allows no more)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    all(self.idle(i) >= self._spares_wanted(i) for i in self._warm_target)
                    or (self._live >= self.max_live and not any(self._starting.values()))
                )
            )

    async def acquire(self, image: str) -> Sandbox:
        async with self._changed:
            if image in self._pace:  # once per acquire, however long it then waits for a slot
                self._pace[image].acquired()
            if image in self._expected:
                self._expected[image] = max(0, self._expected[image] - 1)
            while True:
                if self._closed:
                    raise PoolClosedError("the sandbox pool is closed")
                spares = self._idle.get(image)
                if spares:
                    sandbox = spares.pop()
                    self._schedule_refill(image)
                    return sandbox
                if self._live < self.max_live:
                    self._live += 1
                    break
                victim = self._pop_idle_except(image)
                if victim is not None:
                    # The victim's slot passes to us; its container goes away in the background.
                    self._spawn(self._stop_quietly(victim))
                    break
                await self._changed.wait()
        try:
            sandbox = await self._factory(image)
        except BaseException:
            await self._free_slot()
            raise
        self._schedule_refill(image)
        return sandbox

    async def release(self, sandbox: Sandbox) -> None:
        """Destroy a sandbox handed out by `acquire`, and wait until it is gone."""
        try:
            await sandbox.stop()
        finally:
            await self._free_slot()

    def release_later(self, sandbox: Sandbox) -> None:
        """Destroy a sandbox in the background: the caller goes on at once (a removal costs the engine a few
        hundred ms that an episode need not wait for). Its slot stays taken until the container is gone, so the
        cap on live containers still holds, and `close()` waits for it."""
        self._spawn(self._release_quietly(sandbox))

    @contextlib.asynccontextmanager
    async def sandbox(self, image: str) -> AsyncIterator[Sandbox]:
        """A sandbox for the block's duration; removed off the caller's path when the block ends."""
        sandbox = await self.acquire(image)
        try:
            yield sandbox
        finally:
            self.release_later(sandbox)
            await asyncio.sleep(0)  # lets the removal begin, which fences the sandbox before the caller goes on

    async def close(self) -> None:
        """Stop refilling and destroy the spares. Sandboxes still handed out stay their holders' to release."""
        self._closed = True
        # Refills are let finish rather than cancelled: a start cancelled half-way would leave a container
        # nobody holds. Each one sees the pool closed and destroys what it started.
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        spares = [s for pile in self._idle.values() for s in pile]
        for pile in self._idle.values():
            pile.clear()
        await asyncio.gather(*(self.release(s) for s in spares), return_exceptions=True)

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- slots and refills ---------------------------------------------------------------------------------------

    def _pop_idle_except(self, image: str) -> Sandbox | None:
        for other, pile in self._idle.items():
            if other != image and pile:
                return pile.pop()
        return None

    async def _free_slot(self, *, refill: bool = True) -> None:
        async with self._changed:
            self._live -= 1
            self._changed.notify_all()
        if refill:
            for image in self._warm_target:
                self._schedule_refill(image)

    def _schedule_refill(self, image: str) -> None:
        if not self._closed and image in self._warm_target:
            self._spawn(self._refill(image))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refill(self, image: str) -> None:
        while True:
            async with self._changed:
                missing = self._spares_wanted(image) - self.idle(image) - self._starting[image]
                # Spares never take a slot that real work could need.
                if self._closed or missing <= 0 or self._live >= self.max_live:
                    return
                self._live += 1
                self._starting[image] += 1
            started = time.monotonic()
            try:
                sandbox = await self._factory(image)
            except Exception as exc:
                log.warning("could not start a warm sandbox of %s: %s", image, exc)
                self._starting[image] -= 1
                await self._free_slot(refill=False)  # a failing factory must not retry in a tight loop
                return
            self._pace[image].started(time.monotonic() - started)
            async with self._changed:
                self._starting[image] -= 1
                if self._closed:
                    self._spawn(self.release(sandbox))
                else:
                    self._idle[image].append(sandbox)
                self._changed.notify_all()

    async def _release_quietly(self, sandbox: Sandbox) -> None:
        try:
            await self.release(sandbox)
        except Exception as exc:  # the reaper removes what the engine refused to remove now
            log.warning("could not remove a released sandbox: %s", exc)

    @staticmethod
    async def _stop_quietly(sandbox: Sandbox) -> None:
        with contextlib.suppress(Exception):
            await sandbox.stop()


class StartAhead:
    """How many spares of one image to keep starting: the acquires expected while one container starts (the
    acquire rate over the last WINDOW_S seconds × the moving average of start times), so that a steady stream
    of episodes finds a spare ready. The configured `warm` count stays the floor."""

    WINDOW_S = 10.0
    SMOOTHING = 0.2

    def __init__(self) -> None:
        self.start_s = 0.0
        self._acquires: deque[float] = deque()

    def acquired(self) -> None:
        self._acquires.append(time.monotonic())

    def started(self, seconds: float) -> None:
        self.start_s = seconds if self.start_s == 0 else self.start_s + self.SMOOTHING * (seconds - self.start_s)

    @property
    def rate_per_s(self) -> float:
        horizon = time.monotonic() - self.WINDOW_S
        while self._acquires and self._acquires[0] < horizon:
            self._acquires.popleft()
        return len(self._acquires) / self.WINDOW_S

    def spares(self, ceiling: int) -> int:
        return min(math.ceil(self.rate_per_s * self.start_s), ceiling)
