"""The runs list (runs screen), and the header line of an eval or evolution run's screen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, case, func, select

from cycleqd.db.run_time import run_seconds
from cycleqd.db.schema import Episode, Generation, Run, RunKind, RunStatus
from cycleqd.db.store import Store
from cycleqd.run_config import EvalRunConfig, EvolveRunConfig


@dataclass(frozen=True)
class RunSummary:
    id: str
    kind: RunKind
    status: RunStatus
    created_at: datetime
    elapsed_s: float  # the run's time: the sum of its sessions (db/run_time.py), as eval's and evolve's bars count it
    done: int  # episodes (eval), or committed generations after generation 0 (the experts' insertion) (evolve)
    total: int | None  # None where nothing says how many are planned
    total_is_bound: bool  # an upper bound only: --limit caps tasks per environment, a suite may have fewer
    unit: str  # "ep" or "gen"
    rate: float | None  # done per second of the run's time (elapsed_s), as eval's bar gives it
    errors: int  # episodes an environment error left unscored


def run_summaries(store: Store, now: datetime, limit: int = 200) -> list[RunSummary]:
    """The newest runs with their progress, newest first."""
    return _summaries(store, select(Run).order_by(Run.created_at.desc(), Run.id).limit(limit), now)


def run_summary(store: Store, run_id: str, now: datetime) -> RunSummary | None:
    found = _summaries(store, select(Run).where(Run.id == run_id), now)
    return found[0] if found else None


def _summaries(store: Store, runs_query: Select[tuple[Run]], now: datetime) -> list[RunSummary]:
    """One query for the runs, then one grouped count per kind of work, whatever the number of runs."""
    with store.session() as session:
        runs = list(session.scalars(runs_query))
        ids = [run.id for run in runs]
        episode_counts = {
            row.run_id: row
            for row in session.execute(
                select(
                    Episode.run_id,
                    func.count().label("done"),
                    func.sum(case((Episode.score.is_(None), 1), else_=0)).label("errors"),
                )
                .where(Episode.run_id.in_(ids))
                .group_by(Episode.run_id)
            )
        }
        generation_counts = dict(
            session.execute(
                select(Generation.run_id, func.count())
                .where(Generation.run_id.in_(ids), Generation.number > 0)  # 0 is the experts' insertion
                .group_by(Generation.run_id)
            ).all()
        )
        times = run_seconds(session, runs, now)
    summaries = []
    for run in runs:
        elapsed = times[run.id]
        episodes = episode_counts.get(run.id)
        errors = int(episodes.errors or 0) if episodes else 0
        if run.kind is RunKind.EVOLVE:
            done = int(generation_counts.get(run.id, 0))
            total, bound = EvolveRunConfig.read(run.config or {}).generations, False
            unit = "gen"
        else:
            done = int(episodes.done) if episodes else 0
            completed = run.status == RunStatus.COMPLETED
            total, bound = (done, False) if completed else EvalRunConfig.read(run.config or {}).planned()
            unit = "ep"
        rate = done / elapsed if done and elapsed > 0 else None
        created = run.created_at or now
        summaries.append(
            RunSummary(run.id, run.kind, run.status, created, elapsed, done, total, bound, unit, rate, errors)
        )
    return summaries
