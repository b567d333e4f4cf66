"""One figure for a run's time and for each environment's, from the store (db/run_time.py), in every view: eval's
table and live bar, `cycleqd show`, the monitor; a resume's idle gap counts in none of them."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from sqlalchemy import text

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.db import store as store_module
from cycleqd.db.monitor_store import open_monitor_store
from cycleqd.db.run_time import env_seconds
from cycleqd.db.schema import Generation, RunKind, RunStatus
from cycleqd.db.store import Store
from cycleqd.display import EvalView, _RunWatch, eval_table
from cycleqd.eval.evaluate import eval_result
from cycleqd.eval.orchestrator import EpisodeResult, summarize
from cycleqd.eval.tasks import EvalTask, load_eval_tasks
from cycleqd.events import RunOpened
from cycleqd.monitor import format as fmt
from cycleqd.monitor.queries.eval_run import env_scores
from cycleqd.monitor.queries.runs import run_summary
from cycleqd.results.commands import show_run
from tests.echo_environment import EchoEnvironment
from tests.test_store import store_at_revision

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
RESUMED = T0 + timedelta(hours=1)  # the run lay interrupted for most of an hour


class Clock:
    """The store's `utcnow`, set by the test: when a session begins or ends and when an episode is stored."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(store_module, "utcnow", lambda: self.now)

    def at(self, moment: datetime) -> Clock:
        self.now = moment
        return self


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def five_tasks(echo_environment: EchoEnvironment) -> list[EvalTask]:
    echo_environment.words = ("banana", "river", "stone", "cloud", "maple")
    return load_eval_tasks(["echo"], "builtin", "dev", None)


def play(store: Store, clock: Clock, run_id: str, model: int, task: EvalTask, start: datetime, end: datetime) -> None:
    task_id = store.task_id(task.env, task.suite, task.split, task.key, task.content_hash)
    clock.at(end)  # an episode is stored as it ends
    store.record_episode(EpisodeRecord(run_id, model, task_id, 0, "completed", 1.0, started_at=start))


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def test_every_view_gives_the_store_s_times_and_a_resume_s_idle_gap_counts_in_none(
    five_tasks: list[EvalTask], clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "x.db"
    store = open_store(db)
    run_id = store.create_run(RunKind.EVAL, {"tasks": ["echo"], "planned_episodes": 5}).id
    model = store.model_id("sha256:m", "/models/m")
    a, b, c, d, e = five_tasks
    store.set_run_status(run_id, RunStatus.RUNNING)  # session 1, at T0
    play(store, clock, run_id, model, a, T0 + seconds(1), T0 + seconds(11))
    play(store, clock, run_id, model, b, T0 + seconds(2), T0 + seconds(16))
    clock.at(T0 + seconds(21))
    store.set_run_status(run_id, RunStatus.INTERRUPTED)  # Ctrl-C
    clock.at(RESUMED)
    store.set_run_status(run_id, RunStatus.RUNNING)  # session 2, an hour later
    opened = RunOpened(run_id, True, done=store.count_episodes(run_id), elapsed_s=store.run_seconds(run_id))
    play(store, clock, run_id, model, c, RESUMED + seconds(1), RESUMED + seconds(6))
    play(store, clock, run_id, model, d, RESUMED + seconds(2), RESUMED + seconds(9))
    play(store, clock, run_id, model, e, RESUMED + seconds(3), RESUMED + seconds(10))
    clock.at(RESUMED + seconds(12))
    summarize(store, run_id, five_tasks, model)
    store.set_run_status(run_id, RunStatus.COMPLETED)

    # The environment's time: (16 - 1) in the first session and (10 - 1) in the second, not the 3609 s between its
    # first episode's start and its last one's end; the run's: 21 s and 12 s of work, not the hour and 12 s.
    env_time, run_time = 15.0 + 9.0, 21.0 + 12.0
    with store.session() as session:
        assert env_seconds(session, run_id) == {(model, "echo", "dev"): env_time}
    assert store.wall_times(run_id) == {(model, "echo", "dev"): env_time}
    result = eval_result(store, run_id, db, wall_s=12.0)  # what evaluate() returns after the resume
    assert result.score("echo").wall_s == env_time
    table = Console(file=io.StringIO(), width=200)
    table.print(eval_table(result))
    assert f"│ {env_time:.0f} s " in table.file.getvalue()  # type: ignore[attr-defined]
    capsys.readouterr()
    show_run(db, run_id, True, False, Console())
    (shown,) = json.loads(capsys.readouterr().out)["results"]
    assert shown["wall_s"] == env_time

    monitor = open_monitor_store(db)
    (scores,) = env_scores(monitor, run_id)
    assert scores.wall_s == env_time
    summary = run_summary(monitor, run_id, now=RESUMED + timedelta(days=1))
    assert summary is not None
    assert (summary.elapsed_s, summary.rate) == (run_time, 5 / run_time)
    assert opened.elapsed_s == 21.0 and opened.done == 2

    # eval's live bar during the resume: the run's episodes over the run's time, in the monitor's unit
    view = EvalView(None, _RunWatch("eval", db, Console(file=io.StringIO())))
    view(opened)
    view.clock.opened -= 12.0  # the resume's twelve seconds
    for task in (c, d, e):
        view(EpisodeResult(SimpleNamespace(env=task.env), 0, "completed", 1.0, 1.0))  # type: ignore[arg-type]
    assert view.progress.tasks[0].fields["rate"].split()[:2] == fmt.rate(summary.rate, "ep").split()
    assert round(view.clock.seconds()) == run_time


def test_resuming_a_finished_evolution_adds_only_the_resume_s_own_time(clock: Clock, tmp_path: Path) -> None:
    """It was 4m07s and 29.1 gen/h, then 18m08s and 6.6 gen/h once the finished run was resumed 14 minutes on."""
    db = tmp_path / "x.db"
    store = open_store(db)
    run_id = store.create_run(RunKind.EVOLVE, {"generations": 2}).id
    store.set_run_status(run_id, RunStatus.RUNNING)
    with store.session() as session:
        for number in (0, 1, 2):
            session.add(Generation(run_id=run_id, number=number, active_task=0, finished_at=T0 + seconds(number)))
    clock.at(T0 + seconds(247))
    store.set_run_status(run_id, RunStatus.COMPLETED)
    before = run_summary(open_monitor_store(db), run_id, now=T0 + seconds(300))
    assert before is not None and (before.elapsed_s, fmt.rate(before.rate, "gen")) == (247.0, "29.1 gen/h")
    clock.at(T0 + timedelta(minutes=18))
    store.set_run_status(run_id, RunStatus.RUNNING)  # resumed: nothing left to do but the final table's look-up
    clock.at(T0 + timedelta(minutes=18, seconds=1))
    store.set_run_status(run_id, RunStatus.COMPLETED)
    after = run_summary(open_monitor_store(db), run_id, now=T0 + timedelta(hours=2))
    assert after is not None and after.elapsed_s == 248.0 and fmt.rate(after.rate, "gen") == "29.0 gen/h"


def test_a_session_a_dead_process_left_open_ends_at_its_last_stored_episode(
    five_tasks: list[EvalTask], clock: Clock, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "x.db")
    run_id = store.create_run(RunKind.EVAL, {}).id
    model = store.model_id("sha256:m", "/models/m")
    store.set_run_status(run_id, RunStatus.RUNNING)
    play(store, clock, run_id, model, five_tasks[0], T0 + seconds(1), T0 + seconds(30))
    clock.at(RESUMED)  # killed after its episode; nothing ended its session
    store.set_run_status(run_id, RunStatus.RUNNING)
    assert store.run_seconds(run_id, now=RESUMED + seconds(5)) == 30.0 + 5.0


def test_a_run_stored_before_sessions_keeps_its_time_and_a_resume_adds_to_it(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "old.db"
    with store_at_revision(path, "0020") as connection:
        connection.execute(text("UPDATE runs SET status = 'interrupted', created_at = '2026-03-01 10:00:00.000000', "
                                "finished_at = '2026-03-01 10:04:07.000000' WHERE id = 'r'"))  # fmt: skip
    store = open_store(path)  # migrates to the head
    assert store.run_seconds("r") == 247.0
    clock.at(RESUMED)
    store.set_run_status("r", RunStatus.RUNNING)
    assert store.run_seconds("r", now=RESUMED + seconds(3)) == 250.0
