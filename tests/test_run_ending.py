"""One rule for how a run's status follows the way it stops, for eval and evolve alike (cycleqd/run_ending.py),
on a real store: SIGTERM outside a run's loop (the CLI's SystemExit) once left an eval failed and an evolution
interrupted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from cycleqd.db import open_store
from cycleqd.db.schema import RunStatus
from cycleqd.db.store import Store
from cycleqd.errors import RunInterrupted
from cycleqd.run_ending import run_ending


@dataclass
class Made:
    store: Store | None
    run_id: str | None


@pytest.mark.parametrize("kind", ["eval", "evolve"])
@pytest.mark.parametrize(
    ("stop", "status", "raised"),
    [
        (KeyboardInterrupt(), RunStatus.INTERRUPTED, RunInterrupted),
        (SystemExit(143), RunStatus.INTERRUPTED, SystemExit),  # SIGTERM outside the loop: the CLI's exit
        (asyncio.CancelledError(), RunStatus.INTERRUPTED, asyncio.CancelledError),
        (RuntimeError("a bug"), RunStatus.FAILED, RuntimeError),
    ],
    ids=["ctrl-c", "sigterm", "cancelled", "error"],
)
def test_a_run_stopped_so_is_marked_so_whatever_its_kind(
    tmp_path: Path, kind: str, stop: BaseException, status: RunStatus, raised: type[BaseException]
) -> None:
    store = open_store(tmp_path / "runs.db")
    run = store.create_run(kind, {})
    with pytest.raises(raised), run_ending(Made(store, run.id)):
        raise stop
    assert open_store(tmp_path / "runs.db").get_run(run.id).status == status


def test_an_explained_failure_is_raised_from_the_original_and_a_run_not_yet_made_is_left_alone(tmp_path: Path) -> None:
    explained = ValueError("the server said no: check the key")
    with pytest.raises(ValueError, match="check the key") as caught, run_ending(Made(None, None), lambda _: explained):
        raise RuntimeError("HTTP 401")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert not (tmp_path / "runs.db").exists()
