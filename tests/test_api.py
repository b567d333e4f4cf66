"""The Python API under the CLI: `cycleqd.evaluate` and `cycleqd.evolve` return typed values read from the store, tell
their caller what happens through `on_event`, and raise user errors before anything is created."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from cycleqd.db import open_store
from cycleqd.db.schema import RunStatus

import cycleqd
from cycleqd.eval.orchestrator import EpisodeResult
from cycleqd.events import EpisodesPlanned, RunOpened


@pytest.mark.slow
def test_evaluate_returns_what_the_store_holds(docker_engine, default_model, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "api.db"
    request = cycleqd.EvalRequest(tasks=("db",), limit=2, max_tokens=48, rounds=2, concurrency=2)
    events: list[object] = []
    result = cycleqd.evaluate(request, db=db, on_event=events.append)

    assert isinstance(result, cycleqd.EvalResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.run_id = "other"  # type: ignore[misc]
    store = open_store(db)
    run = store.get_run(result.run_id)
    assert run is not None and run.status == RunStatus.COMPLETED and run.kind == "eval"
    stored = store.episodes(result.run_id)
    assert len(stored) == 2
    db_score = result.score("db")
    assert db_score.episodes == 2 and db_score.split == "dev"
    scored = [e.score for e in stored if e.score is not None]
    assert db_score.score == pytest.approx(sum(scored) / len(scored))
    assert db_score.interval is not None and db_score.interval.n == 2
    assert db_score.interval.low <= db_score.score <= db_score.interval.high
    assert db_score.model.startswith("smollm2-135m-instruct@")

    episodes = list(result.episodes())
    assert sorted(e["episode"] for e in episodes) == sorted(e.id for e in stored)
    assert all(e["messages"][-1]["role"] in ("assistant", "user") and e["env"] == "db" for e in episodes)

    assert events[0] == RunOpened(result.run_id, resumed=False)
    assert EpisodesPlanned(2) in events
    assert sorted(e.task.key for e in events if isinstance(e, EpisodeResult)) == sorted(e["task"] for e in episodes)

    # A finished run resumed by a prefix of its id: read back, the same scores, nothing played.
    again = cycleqd.evaluate(request, db=db, resume=result.run_id[:6])
    assert again.run_id == result.run_id and again.scores == result.scores
    assert len(open_store(db).episodes(result.run_id)) == 2


def test_mistakes_raise_user_errors_and_create_nothing(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    with pytest.raises(cycleqd.UserError, match="--task-ids: no task 'nope'"):
        cycleqd.evaluate(cycleqd.EvalRequest(tasks=("db",), task_ids=("nope",)), db=db)
    with pytest.raises(cycleqd.UserError, match="give a config"):
        cycleqd.evolve(None, db=db)
    assert not db.exists()
    open_store(db).engine.dispose()
    with pytest.raises(cycleqd.UserError, match="no run 'abc'"):
        cycleqd.evaluate(cycleqd.EvalRequest(), db=db, resume="abc")


def test_import_is_light_and_evolve_stays_callable() -> None:
    # `cycleqd.evolve` is both the API's function and a subpackage: importing a module under it must not hide it.
    code = (
        "import sys, cycleqd\n"
        "assert not {'sqlalchemy', 'rich', 'torch', 'yaml', 'docker'} & set(sys.modules), sorted(sys.modules)\n"
        "import cycleqd.evolve.loop\n"
        "assert callable(cycleqd.evolve) and callable(cycleqd.evaluate)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
