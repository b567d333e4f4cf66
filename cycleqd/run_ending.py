"""How a run's status follows the way it stops, one rule for `eval` and `evolve`: Ctrl-C, SIGTERM (the CLI's
SystemExit outside a run's loop, a cancelled task inside it) and a cancelled task leave it interrupted, resumable;
anything else leaves it failed, also resumable. Once written twice, the copies disagreed: SIGTERM outside the loop
left an eval failed and an evolution interrupted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

from cycleqd.db.schema import RunStatus
from cycleqd.db.store import Store
from cycleqd.errors import RunInterrupted


class StoredRun(Protocol):
    """A run as it is being made: its store and id exist once its row was written (an eval makes it after its model
    is served, so an early failure has none to mark)."""

    store: Store | None
    run_id: str | None


def _no_explanation(_: BaseException) -> BaseException | None:
    return None


@contextlib.contextmanager
def run_ending(
    run: StoredRun, explain: Callable[[BaseException], BaseException | None] = _no_explanation
) -> Iterator[None]:
    """The block is the run's work; `explain` may put a user's error in place of a failure (raised from it)."""

    def mark(status: RunStatus) -> None:
        if run.store is not None and run.run_id is not None:
            run.store.set_run_status(run.run_id, status)

    try:
        yield
    except KeyboardInterrupt:
        mark(RunStatus.INTERRUPTED)
        raise RunInterrupted(run.run_id) from None
    except (SystemExit, asyncio.CancelledError):
        mark(RunStatus.INTERRUPTED)
        raise
    except BaseException as exc:
        mark(RunStatus.FAILED)
        explained = explain(exc)
        if explained is not None:
            raise explained from exc
        raise
