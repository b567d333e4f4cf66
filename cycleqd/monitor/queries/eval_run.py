"""An eval run's screen: its config, its scores per environment as they stand, the episodes committed last and
those in flight."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, inspect, select

from cycleqd.db.schema import Episode, EpisodeInFlight, Model, Run, Task
from cycleqd.db.scores import ScoreTally
from cycleqd.db.store import Store
from cycleqd.results.lookup import model_label
from cycleqd.results.values import EnvScore
from cycleqd.run_config import EvalRunConfig


def eval_config(store: Store, run_id: str) -> EvalRunConfig:
    with store.session() as session:
        config = session.scalar(select(Run.config).where(Run.id == run_id))
    return EvalRunConfig.read(config or {})


def env_scores(store: Store, run_id: str) -> list[EnvScore]:
    """Scores per (model, env, split) as they stand, with how the episodes ended: the tally the aggregates written
    at the end hold (db/scores.py), and the time each environment took (db/run_time.py), as eval's table and
    `show` give them. No interval: the monitor polls, and a bootstrap per poll would cost more than the read."""
    with store.session() as session:
        rows = session.execute(
            select(
                Episode.model_id,
                Task.env,
                Task.split,
                Episode.status,
                func.count().label("n"),
                func.count(Episode.score).label("scored"),
                func.sum(Episode.score).label("total"),
            )
            .join(Task, Task.id == Episode.task_id)
            .where(Episode.run_id == run_id)
            .group_by(Episode.model_id, Task.env, Task.split, Episode.status)
        ).all()
        ids = {row.model_id for row in rows}
        labels = {
            model.id: model_label(model.reference, model.identity)
            for model in session.scalars(select(Model).where(Model.id.in_(ids)))
        }
    groups: dict[tuple[str, str, int], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.env, row.split, row.model_id)].append(row)
    times = store.wall_times(run_id)
    scores = []
    for (env, split, model_id), items in sorted(groups.items()):
        tally = sum((ScoreTally(r.n, r.scored, r.total or 0.0) for r in items), ScoreTally())
        statuses = {r.status: r.n for r in sorted(items, key=lambda r: r.status)}
        scores.append(
            EnvScore(
                model=labels.get(model_id, str(model_id)),
                env=env,
                split=split,
                score=tally.mean,
                episodes=tally.episodes,
                errors=tally.errors,
                wall_s=times.get((model_id, env, split), 0.0),
                interval=None,
                statuses=statuses,
            )  # fmt: skip
        )
    return scores


@dataclass(frozen=True)
class EpisodeRow:
    id: int
    env: str
    task_key: str
    repeat: int
    status: str
    score: float | None
    rounds: int
    tokens: int
    latency_s: float
    finished_at: datetime


def recent_episodes(store: Store, run_id: str, limit: int = 100) -> list[EpisodeRow]:
    """The run's last `limit` committed episodes, newest first (ids grow in commit order). Transcripts are left
    out: they can weigh megabytes, and this runs on every poll."""
    with store.session() as session:
        rows = session.execute(
            select(
                Episode.id, Task.env, Task.task_key, Episode.repeat, Episode.status, Episode.score, Episode.rounds,
                Episode.prompt_tokens + Episode.completion_tokens, Episode.latency_s, Episode.finished_at,
            )
            .join(Task, Task.id == Episode.task_id)
            .where(Episode.run_id == run_id)
            .order_by(Episode.id.desc())
            .limit(limit)
        ).all()  # fmt: skip
    return [EpisodeRow(*row) for row in rows]


@dataclass(frozen=True)
class RunningEpisodeRow:
    """An episode not yet committed, as its last round left it."""

    model_id: int
    task_id: int
    env: str
    task_key: str
    repeat: int
    rounds: int  # model replies so far
    tokens: int  # prompt and generated, as a committed episode's count
    started_at: datetime  # this attempt's start

    @property
    def key(self) -> str:
        """Its row's key in a table beside committed episodes (whose keys are their ids: digits only)."""
        return f"running:{self.model_id}:{self.task_id}:{self.repeat}"


def episodes_in_flight(store: Store, run_id: str) -> list[RunningEpisodeRow]:
    """The run's episodes being played, longest running first. One whose episode is committed is left out: the
    committed row is the truth (the commit removes the row in flight in its own transaction; this only guards
    against a row left by an uncommitted duplicate). A store from before revision 0022 (the monitor never migrates)
    has none."""
    committed = exists().where(
        and_(
            Episode.run_id == EpisodeInFlight.run_id,
            Episode.model_id == EpisodeInFlight.model_id,
            Episode.task_id == EpisodeInFlight.task_id,
            Episode.repeat == EpisodeInFlight.repeat,
        )
    )
    with store.session() as session:
        if not inspect(session.connection()).has_table(EpisodeInFlight.__tablename__):
            return []
        rows = session.execute(
            select(
                EpisodeInFlight.model_id, EpisodeInFlight.task_id, Task.env, Task.task_key, EpisodeInFlight.repeat,
                EpisodeInFlight.rounds, EpisodeInFlight.prompt_tokens + EpisodeInFlight.completion_tokens,
                EpisodeInFlight.started_at,
            )
            .join(Task, Task.id == EpisodeInFlight.task_id)
            .where(EpisodeInFlight.run_id == run_id, ~committed)
            .order_by(EpisodeInFlight.started_at, EpisodeInFlight.task_id, EpisodeInFlight.repeat)
        ).all()  # fmt: skip
    return [RunningEpisodeRow(*row) for row in rows]
