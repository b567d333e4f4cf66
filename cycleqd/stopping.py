"""How a run stops: Ctrl-C and SIGTERM cancel its asyncio task, so every episode still running releases its sandbox
and server, and the caller marks the run interrupted."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def stopped_by_ctrl_c_or_sigterm(run: Awaitable[T], on_second: Callable[[], None]) -> T:
    """`run`, which Ctrl-C or SIGTERM cancels (the episodes still running stop and release their sandboxes and
    servers; committed episodes stay): KeyboardInterrupt once the cancellation is through. A second signal while
    that takes its seconds calls `on_second`: asyncio's own second Ctrl-C raised KeyboardInterrupt inside whatever
    task ran, which left tracebacks under the resume line and could skip the release. SIGTERM goes through the loop
    too, not by sending ourselves SIGINT: a child of a background shell inherits SIGINT ignored (and keeps it so
    here), and SIGTERM was then lost while the run went on."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    signals = [signal.SIGTERM] + ([] if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else [signal.SIGINT])
    previous = {signum: signal.getsignal(signum) for signum in signals}
    stops = 0

    def stop() -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            main.cancel()
        elif stops == 2:
            on_second()

    for signum in signals:
        loop.add_signal_handler(signum, stop)
    try:
        return await run
    except asyncio.CancelledError:
        if stops:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous[signum])  # SIGTERM: the CLI's exit, which still removes our containers
