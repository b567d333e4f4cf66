"""How long a run and each of its environments took: defined once, from the store, for every view of a run (eval's
table and live bar, `cycleqd show`, the monitor, evolve's live bar), so that none counts its own way.

A run's time is the sum of its sessions (`RunSession`: from its start or a resume to its end), so the idle hours
between an interruption and its resume, or before a finished run is resumed again, count for nothing. A run with no
session recorded (a row written by hand) counts from its creation to its end. Its rates are its work over this time.

An environment's time (per model and split) is, in each session, the span from the start of its first episode to
the end of its last one, summed over the sessions: within one session that is what `cycleqd show` always gave (the
time that environment took, not the whole run's), and across a resume it leaves out the gap.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cycleqd.db.schema import Episode, Run, RunSession, RunStatus, Task

EnvKey = tuple[int, str, str]  # (model id, env, split)


def span(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)


def run_seconds(session: Session, runs: list[Run], now: datetime) -> dict[str, float]:
    """Each run's time, its session still under way counted up to `now`: one query whatever the number of runs."""
    rows = session.execute(
        select(RunSession.run_id, RunSession.started_at, RunSession.ended_at).where(
            RunSession.run_id.in_([run.id for run in runs])
        )
    )
    totals: dict[str, float] = defaultdict(float)
    for run_id, started, ended in rows:
        totals[run_id] += span(started, ended or now)
    for run in runs:
        if run.id not in totals:
            running = run.status is RunStatus.RUNNING or run.finished_at is None
            totals[run.id] = span(run.created_at, now if running else run.finished_at)
    return dict(totals)


def env_seconds(session: Session, run_id: str) -> dict[EnvKey, float]:
    """Per (model, env, split) of the run: the span of its episodes within each session, summed. An episode belongs
    to the last session begun before it started (the first one if it started before any: a clock a node of a
    cluster keeps)."""
    number = (
        select(func.max(RunSession.number))
        .where(RunSession.run_id == Episode.run_id, RunSession.started_at <= Episode.started_at)
        .correlate(Episode)
        .scalar_subquery()
    )
    in_session = func.coalesce(number, 0)
    rows = session.execute(
        select(Episode.model_id, Task.env, Task.split, func.min(Episode.started_at), func.max(Episode.finished_at))
        .join(Task, Episode.task_id == Task.id)
        .where(Episode.run_id == run_id)
        .group_by(Episode.model_id, Task.env, Task.split, in_session)
    )
    totals: dict[EnvKey, float] = defaultdict(float)
    for model_id, env, split, first, last in rows:
        totals[(model_id, env, split)] += span(first, last)
    return dict(totals)
