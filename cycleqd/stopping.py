"""How a run stops: Ctrl-C and SIGTERM cancel its asyncio task, so every episode still running releases its sandbox
and server, and the caller marks the run interrupted. `run_blocking` runs a run's coroutine from synchronous code,
also where an event loop already runs (a Jupyter cell, an async application)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TypeVar

T = TypeVar("T")


class _Stops:
    """The stop requests of one run (Ctrl-C, SIGTERM): the first cancels the run's task, the second calls
    `on_second`. Only ever called on the run's loop, so it needs no lock."""

    def __init__(self, on_second: Callable[[], None]) -> None:
        self.on_second = on_second
        self.count = 0
        self.task: asyncio.Task[object] | None = None  # None until the run's loop has started it

    def request(self) -> None:
        self.count += 1
        if self.count == 1 and self.task is not None:
            self.task.cancel()
        elif self.count == 2:
            self.on_second()


def run_blocking(make: Callable[[], Awaitable[T]], on_second: Callable[[], None]) -> T:
    """`make()` run to its end, stopped by Ctrl-C or SIGTERM as `stopped_by_ctrl_c_or_sigterm` says. Where this thread
    already runs an event loop, asyncio.run cannot: the run gets a fresh loop in a worker thread while this thread
    waits. The coroutine is made only on the loop that runs it, so no failure leaves one never awaited."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(stopped_by_ctrl_c_or_sigterm(make, _Stops(on_second)))
    return _on_a_thread_of_its_own(make, _Stops(on_second))


def _on_a_thread_of_its_own(make: Callable[[], Awaitable[T]], stops: _Stops) -> T:
    """Python lets only the main thread set signal handlers, a loop's included: the worker's loop sets none, and the
    waiting thread, when it is the main one, passes Ctrl-C and SIGTERM on to it as stop requests. Waiting in any
    other thread, the signals stay the application's."""
    loop = asyncio.new_event_loop()  # made here, so that a stop can reach it before it runs
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: loop) as runner:
                result = runner.run(stopped_by_ctrl_c_or_sigterm(make, stops))
        except BaseException as exc:  # noqa: BLE001 - raised again in the waiting thread
            outcome.set_exception(exc)
        else:
            outcome.set_result(result)

    def forward(*_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over, its outcome on its way
            loop.call_soon_threadsafe(stops.request)

    signals = _catchable_signals() if threading.current_thread() is threading.main_thread() else []
    previous = {signum: signal.signal(signum, forward) for signum in signals}
    try:
        threading.Thread(target=work, name="cycleqd-run").start()
        while not outcome.done():
            # A handler runs in the main thread only, once it wakes: a signal the OS gave another thread waits
            # for the next timeout.
            concurrent.futures.wait([outcome], timeout=0.5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return outcome.result()


async def stopped_by_ctrl_c_or_sigterm(make: Callable[[], Awaitable[T]], stops: _Stops) -> T:
    """`make()`, which Ctrl-C or SIGTERM cancels (the episodes still running stop and release their sandboxes and
    servers; committed episodes stay): KeyboardInterrupt once the cancellation is through. A second signal while
    that takes its seconds calls `stops.on_second`: asyncio's own second Ctrl-C raised KeyboardInterrupt inside whatever
    task ran, which left tracebacks under the resume line and could skip the release. SIGTERM goes through the loop
    too, not by sending ourselves SIGINT: a child of a background shell inherits SIGINT ignored (and keeps it so
    here), and SIGTERM was then lost while the run went on. Off the main thread no handler can be set: the waiting
    thread passes the signals on (`_on_a_thread_of_its_own`)."""
    stops.task = asyncio.current_task()
    if stops.count:  # stopped before the loop started it
        raise KeyboardInterrupt
    loop = asyncio.get_running_loop()
    signals = _catchable_signals() if threading.current_thread() is threading.main_thread() else []
    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        loop.add_signal_handler(signum, stops.request)
    try:
        return await make()
    except asyncio.CancelledError:
        if stops.count:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous[signum])  # SIGTERM: the CLI's exit, which still removes our containers


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the blocking code inside as Ctrl-C does, with a KeyboardInterrupt, for a command that runs stages
    outside a run's loop (the demo's data and experts). The CLI's own SIGTERM handler exits instead: that SystemExit,
    raised inside an `asyncio.run` (the generation of a DB suite), ended the demo in two tracebacks ("no running event
    loop") where Ctrl-C ended cleanly. So SIGTERM calls SIGINT's handler of the moment: `asyncio.run`'s, while one
    runs, which cancels its task and raises KeyboardInterrupt once that task has cleaned up; Python's default one
    elsewhere. A run's loop inside (`stopped_by_ctrl_c_or_sigterm`) sets its own handlers, and puts this one back."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        yield
        return

    def as_ctrl_c(_signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored (a child of a background shell) or default: stop here all the same
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _catchable_signals() -> list[signal.Signals]:
    """SIGINT only where it is not ignored: a child of a background shell must stay deaf to it."""
    return [signal.SIGTERM] + ([] if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else [signal.SIGINT])
