"""One mean over scored episodes for every view of a run (cycleqd.db.scores): the aggregates an eval stores and
returns, `cycleqd show` (from those, or from the episodes of a run that stored none) and the monitor agree, and an
environment with no scored episode has no mean in any of them, written "–"."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.db.monitor_store import open_monitor_store
from cycleqd.db.scores import ScoreTally
from cycleqd.display import eval_table
from cycleqd.eval.evaluate import eval_result
from cycleqd.eval.orchestrator import summarize
from cycleqd.eval.tasks import EvalTask, load_eval_tasks
from cycleqd.monitor.queries.eval_run import env_scores
from cycleqd.results.commands import print_runs, show_run
from tests.echo_environment import EchoEnvironment


@pytest.fixture
def four_tasks(echo_environment: EchoEnvironment) -> list[EvalTask]:
    echo_environment.words = ("banana", "river", "stone", "cloud")
    return load_eval_tasks(["echo"], "builtin", "dev", None)


def stored_run(db: Path, tasks: list[EvalTask], scores: tuple[float | None, ...]) -> tuple[str, int]:
    """A run whose episodes scored `scores` (None: an environment error), with no aggregate stored yet."""
    store = open_store(db)
    run = store.create_run("eval", {"tasks": ["echo"]})
    model = store.model_id("sha256:m", "/models/m")
    for task, score in zip(tasks, scores, strict=True):
        task_id = store.task_id(task.env, task.suite, task.split, task.key, task.content_hash)
        store.record_episode(EpisodeRecord(run.id, model, task_id, 0, "env_error" if score is None else "completed",
                                           score))  # fmt: skip
    return run.id, model


def shown(db: Path, run_id: str, capsys: pytest.CaptureFixture[str]) -> float | None:
    capsys.readouterr()
    show_run(db, run_id, True, False, Console())
    (result,) = json.loads(capsys.readouterr().out)["results"]
    return result["score"]


def text_of(render: object) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(render)
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("scores", "mean"),
    [((None, None, None, None), None), ((1.0, 0.5, None, 0.25), 1.75 / 3)],
    ids=["nothing scored", "mixed"],
)
def test_every_view_of_a_run_has_the_same_mean(
    four_tasks: list[EvalTask], tmp_path: Path, capsys: pytest.CaptureFixture[str], scores: tuple, mean: float | None
) -> None:
    db = tmp_path / "views.db"
    run_id, model = stored_run(db, four_tasks, scores)
    views = {"show, from the episodes": shown(db, run_id, capsys)}
    (live,) = env_scores(open_monitor_store(db), run_id)
    views["monitor"] = live.score
    (aggregate,) = summarize(open_store(db), run_id, four_tasks, model)
    views["summarize"] = aggregate.score
    views["show, from the stored aggregate"] = shown(db, run_id, capsys)
    result = eval_result(open_store(db), run_id, db)
    views["evaluate's result"] = result.score("echo").score
    assert views == dict.fromkeys(views, mean)
    errors = scores.count(None)
    assert (live.episodes, live.errors) == (aggregate.episodes, aggregate.errors) == (4, errors)

    written = "–" if mean is None else f"{mean:.3f}"
    assert f"│ echo │ dev   │ {written} " in text_of(eval_table(result))
    show_run(db, run_id, False, True, Console(file=io.StringIO()))  # the table and the per-task rows: no error
    listing = Console(file=io.StringIO(), width=200)
    print_runs(db, listing)
    assert f"echo {'–' if mean is None else f'{mean:.2f}'}" in listing.file.getvalue()  # type: ignore[attr-defined]


def test_a_tally_adds_up_as_its_episodes_do() -> None:
    parts = [ScoreTally.of([1.0, None]), ScoreTally.of([None]), ScoreTally.of([0.0, 0.5])]
    assert sum(parts, ScoreTally()) == ScoreTally.of([1.0, None, None, 0.0, 0.5]) == ScoreTally(5, 3, 1.5)
    assert (ScoreTally(5, 3, 1.5).mean, ScoreTally(5, 3, 1.5).errors) == (0.5, 2)
    assert (ScoreTally.of([None, None]).mean, ScoreTally().mean) == (None, None)
    assert ScoreTally.of([0.0]).mean == 0.0  # a scored 0 is a mean of 0, not no mean
