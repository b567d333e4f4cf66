"""The Python API under the CLI: `cycleqd.evaluate` and `cycleqd.evolve` return typed values read from the store, tell
their caller what happens through `on_event`, and raise user errors before anything is created."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cycleqd
from cycleqd.db import open_store
from cycleqd.db.schema import RunStatus
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
        "import cycleqd.evolution.loop\n"
        "assert callable(cycleqd.evolve) and callable(cycleqd.evaluate)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_evolve_returns_its_final_table_and_tells_each_step(
    docker_engine, default_model, smollm_experts, tmp_path: Path
) -> None:  # noqa: ANN001
    from cycleqd.events import Stage
    from cycleqd.evolution.loop import EventKind, EvolutionEvent

    experts = smollm_experts
    (tmp_path / "evolve.yaml").write_text(
        f"base: {default_model.path}\ntasks:\n"
        f"  - {{name: db, env: db, expert: {experts[0]}, limit: 1}}\n"
        f"  - {{name: coding, env: coding, expert: {experts[1]}, limit: 1}}\n"
        "generations: 1\nbins: 3\nseed: 1\neval: {concurrency: 2, max_tokens: 24, rounds: 2}\n"
    )
    events: list[object] = []
    result = cycleqd.evolve(
        cycleqd.load_config(tmp_path / "evolve.yaml"), db=tmp_path / "evo.db", on_event=events.append
    )

    assert isinstance(result, cycleqd.EvolveResult)
    assert [row.label for row in result.table] == ["base", "expert db", "expert coding", "naive merge", "CycleQD final"]
    assert all(set(row.test_scores) == {"db", "coding"} for row in result.table)
    assert (result.final_model / "config.json").is_file() and result.final.kind == "final"
    assert set(result.intervals.averages) == {row.candidate_id for row in result.table}
    store = open_store(tmp_path / "evo.db")
    assert store.get_run(result.run_id).status == RunStatus.COMPLETED
    assert len(list(result.episodes())) == len(store.episodes(result.run_id)) > 0

    assert events[0] == RunOpened(result.run_id, resumed=False, done=0, planned=1)
    assert any(isinstance(e, Stage) and e.text and "SVD cache" in e.text for e in events)
    kinds = [e.kind for e in events if isinstance(e, EvolutionEvent)]
    assert kinds.count(EventKind.EXPERT) == 2 and EventKind.GENERATION in kinds and kinds[-1] is EventKind.FINAL
    assert json.loads(json.dumps(result.to_json()))["run"] == result.run_id


def test_the_readmes_example_runs_as_written(docker_engine, default_model, tmp_path: Path) -> None:  # noqa: ANN001
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## From Python.*?```python\n(.*?)```", readme, re.S)
    assert code is not None, "the README lost its Python example"
    (tmp_path / "example.py").write_text(code.group(1))
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    first, *episodes = done.stdout.strip().splitlines()
    run_id, score, interval = first.split(" ", 2)
    assert open_store(tmp_path / "api.db").get_run(run_id) is not None and 0 <= float(score) <= 1
    assert interval.startswith("Interval(") and "n=2" in interval
    line = re.compile(r"dev\.jsonl#\d \w+ (None|[\d.]+) \d+ messages")
    assert len(episodes) == 2 and all(line.fullmatch(e) for e in episodes)
