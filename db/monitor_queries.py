"""Read-only queries of the live monitor (`cycleqd tui`): what each of its screens shows, as plain values.

The monitor polls while another process writes. Each query opens a short session and returns frozen dataclasses,
never ORM rows, so no transaction (and no read snapshot pinning the WAL) outlives a call, and no lazy load can
fire later from the UI. The monitor's connections set `query_only`, so a bug here fails loudly instead of writing.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Select, and_, case, create_engine, event, exists, func, inspect, select
from sqlalchemy.exc import DatabaseError
from sqlalchemy.pool import NullPool

from cycleqd.db.run_time import run_seconds
from cycleqd.db.schema import (
    Archive,
    Candidate,
    CandidateKind,
    CandidateStatus,
    Cell,
    Episode,
    EpisodeInFlight,
    Generation,
    Run,
    RunKind,
    RunStatus,
    ServerState,
    Task,
)
from cycleqd.db.scores import ScoreTally
from cycleqd.db.store import Store, StoreOpenError, check_store_file


def _monitor_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")  # the monitor must never write, not even by accident
    cursor.execute("PRAGMA busy_timeout=5000")  # only a checkpoint or a schema change can make a reader wait
    cursor.close()


def _reader(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that create and lock nothing. While a writer is live (its -wal file exists) a read-only
    connection shares its WAL index and sees every commit; with no writer, an immutable one reads the file as it
    is, so a read-only command leaves no -wal, -shm or lock behind (a plain connection would create them, and a
    read-only one could not remove them again)."""

    def connect() -> sqlite3.Connection:
        live = Path(f"{path}-wal").exists()
        mode = "mode=ro" if live else "immutable=1"
        return sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, check_same_thread=False)

    return connect


def open_monitor_store(path: Path) -> Store:
    """The store at `path`, opened for reading only. Unlike `open_store`, it neither creates nor migrates, and it
    leaves nothing beside the file. Each session gets a fresh connection, so a writer that starts later is seen."""
    path = Path(path).expanduser().resolve()
    check_store_file(path)
    engine = create_engine("sqlite://", creator=_reader(path), poolclass=NullPool)
    event.listen(engine, "connect", _monitor_pragmas)
    try:
        tables = set(inspect(engine).get_table_names())
    except DatabaseError as exc:
        engine.dispose()
        raise StoreOpenError(f"{path}: not an SQLite database ({exc.orig})") from None
    if "runs" not in tables:
        engine.dispose()
        raise StoreOpenError(f"{path}: an SQLite file, but not a cycleqd store (it has no runs table)")
    return Store(engine)


# -- runs list ---------------------------------------------------------------------------------------------------


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


def _planned_episodes(config: dict[str, Any]) -> tuple[int | None, bool]:
    planned = config.get("planned_episodes")
    if isinstance(planned, int):
        return planned, False
    limit, tasks, repeats = config.get("limit"), config.get("tasks"), config.get("repeats", 1)
    if isinstance(limit, int) and isinstance(tasks, list) and isinstance(repeats, int):
        return limit * len(tasks) * repeats, True
    return None, False


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
            generations = run.config.get("generations")
            total, bound = (generations if isinstance(generations, int) else None), False
            unit = "gen"
        else:
            done = int(episodes.done) if episodes else 0
            total, bound = (done, False) if run.status == RunStatus.COMPLETED else _planned_episodes(run.config)
            unit = "ep"
        rate = done / elapsed if done and elapsed > 0 else None
        created = run.created_at or now
        summaries.append(
            RunSummary(run.id, run.kind, run.status, created, elapsed, done, total, bound, unit, rate, errors)
        )
    return summaries


def run_config(store: Store, run_id: str) -> dict[str, Any]:
    with store.session() as session:
        config = session.scalar(select(Run.config).where(Run.id == run_id))
    return dict(config or {})


# -- eval run ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvScore:
    """Scores of one (env, split) as they stand: the same tally as the aggregates written at the end."""

    env: str
    split: str
    episodes: int
    errors: int  # environment errors: never scored
    mean: float | None  # over scored episodes
    statuses: dict[str, int]  # episode status → count
    seconds: float | None = None  # the time this environment took (db/run_time.py), as eval's table and `show` say


def env_scores(store: Store, run_id: str) -> list[EnvScore]:
    with store.session() as session:
        rows = session.execute(
            select(
                Task.env,
                Task.split,
                Episode.status,
                func.count().label("n"),
                func.count(Episode.score).label("scored"),
                func.sum(Episode.score).label("total"),
            )
            .join(Task, Task.id == Episode.task_id)
            .where(Episode.run_id == run_id)
            .group_by(Task.env, Task.split, Episode.status)
        ).all()
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.env, row.split)].append(row)
    # An eval run plays one model, so (env, split) names one of the store's (model, env, split) times.
    times = {(env, split): seconds for (_, env, split), seconds in store.wall_times(run_id).items()}
    scores = []
    for (env, split), items in sorted(groups.items()):
        tally = sum((ScoreTally(r.n, r.scored, r.total or 0.0) for r in items), ScoreTally())
        statuses = {r.status: r.n for r in sorted(items, key=lambda r: r.status)}
        scores.append(EnvScore(env, split, tally.episodes, tally.errors, tally.mean, statuses, times.get((env, split))))
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


@dataclass(frozen=True)
class EpisodeDetail:
    id: int
    run_id: str
    env: str
    suite: str
    split: str
    task_key: str
    repeat: int
    model: str
    status: str
    score: float | None
    rounds: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    error: str | None
    transcript: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime
    context_messages: int = 0  # leading messages the environment wrote (prompt, one-shot example, the task)
    verdict: dict[str, Any] = field(default_factory=dict)  # answer, expected, detail


def episode_detail(store: Store, episode_id: int) -> EpisodeDetail | None:
    with store.session() as session:
        episode = session.get(Episode, episode_id)
        if episode is None:
            return None
        task, model = episode.task, episode.model
        return EpisodeDetail(
            episode.id,
            episode.run_id,
            task.env,
            task.suite,
            task.split,
            task.task_key,
            episode.repeat,
            model.reference,
            episode.status,
            episode.score,
            episode.rounds,
            episode.prompt_tokens,
            episode.completion_tokens,
            episode.latency_s,
            episode.error,
            list(episode.transcript),
            episode.started_at,
            episode.finished_at,
            episode.context_messages,
            dict(episode.verdict or {}),
        )


# -- evolution run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellView:
    candidate_id: int
    quality: float
    generation: int


@dataclass(frozen=True)
class ArchiveView:
    id: int
    task_index: int
    task_name: str
    bins: int
    bc_tasks: list[str]
    bc_ranges: list[list[float]]
    cells: dict[tuple[int, ...], CellView] = field(default_factory=dict)

    @property
    def cells_total(self) -> int:
        return self.bins ** len(self.bc_tasks)


def _cell_index(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split(",")) if key else ()


def archive_views(store: Store, run_id: str) -> list[ArchiveView]:
    with store.session() as session:
        archives = list(session.scalars(select(Archive).where(Archive.run_id == run_id).order_by(Archive.task_index)))
        cells = session.execute(
            select(Cell).join(Archive, Archive.id == Cell.archive_id).where(Archive.run_id == run_id)
        ).scalars()
        by_archive: dict[int, dict[tuple[int, ...], CellView]] = defaultdict(dict)
        for cell in cells:
            view = CellView(cell.candidate_id, cell.quality, cell.generation)
            by_archive[cell.archive_id][_cell_index(cell.cell)] = view
        return [
            ArchiveView(
                a.id,
                a.task_index,
                a.task_name,
                a.bins,
                list(a.bc_tasks),
                [list(r) for r in a.bc_ranges],
                by_archive.get(a.id, {}),
            )
            for a in archives
        ]


@dataclass(frozen=True)
class GenerationView:
    number: int
    active_task: int
    metrics: dict[str, dict[str, float]]  # archive name → {"coverage", "qd_score", "best", …}


def generation_history(store: Store, run_id: str) -> list[GenerationView]:
    with store.session() as session:
        rows = session.execute(
            select(Generation.number, Generation.active_task, Generation.metrics)
            .where(Generation.run_id == run_id)
            .order_by(Generation.number)
        ).all()
    return [
        GenerationView(number, active, {m["archive"]: dict(m) for m in metrics if "archive" in m})
        for number, active, metrics in rows
    ]


@dataclass(frozen=True)
class EvolutionProgress:
    generations_done: int  # of generations 1…G: generation 0 inserts the experts; async runs commit out of order
    generations_total: int | None
    last_generation: int | None
    active_task: str | None  # of the newest candidate (the generation under way), else of the last generation
    candidates: int
    pending: int  # candidates proposed but not yet evaluated
    episodes: EpisodeSaving | None = None  # children's selection episodes, when the run counted them
    stage: str | None = None  # before the first generation: e.g. building the SVD cache


@dataclass(frozen=True)
class EpisodeSaving:
    """Children's selection episodes played against planned: what racing (and genome reuse) saved."""

    played: int
    planned: int
    children: int  # children whose episodes were counted
    rejected_early: int

    @property
    def saved(self) -> float:
        return 1.0 - self.played / self.planned if self.planned else 0.0


def episode_saving(store: Store, run_id: str) -> EpisodeSaving | None:
    with store.session() as session:
        played, planned, children, early = session.execute(
            select(
                func.sum(Candidate.episodes_played),
                func.sum(Candidate.episodes_planned),
                func.count(),
                func.sum(case((Candidate.status == CandidateStatus.REJECTED_EARLY, 1), else_=0)),
            ).where(
                Candidate.run_id == run_id,
                Candidate.kind == CandidateKind.CHILD,
                Candidate.episodes_planned.is_not(None),
            )
        ).one()
    if not children:
        return None
    return EpisodeSaving(int(played or 0), int(planned or 0), int(children), int(early or 0))


def evolution_progress(store: Store, run_id: str) -> EvolutionProgress:
    with store.session() as session:
        row = session.execute(select(Run.config, Run.stage).where(Run.id == run_id)).one_or_none()
        config, stage = (row[0] or {}, row[1]) if row else ({}, None)
        names = dict(
            session.execute(select(Archive.task_index, Archive.task_name).where(Archive.run_id == run_id)).all()
        )
        done, last = session.execute(
            select(func.count(Generation.number).filter(Generation.number > 0), func.max(Generation.number)).where(
                Generation.run_id == run_id
            )
        ).one()
        last_active = session.scalar(
            select(Generation.active_task).where(Generation.run_id == run_id).order_by(Generation.number.desc())
        )
        newest_active = session.scalar(
            select(Candidate.active_task)
            .where(Candidate.run_id == run_id, Candidate.active_task.is_not(None))
            .order_by(Candidate.generation.desc(), Candidate.id.desc())
        )
        count, pending = session.execute(
            select(func.count(), func.sum(case((Candidate.status == CandidateStatus.PENDING, 1), else_=0))).where(
                Candidate.run_id == run_id
            )
        ).one()
    active = newest_active if newest_active is not None else last_active
    if active is not None and active not in names:
        tasks = config.get("tasks") or []
        names[active] = tasks[active].get("name", str(active)) if active < len(tasks) else str(active)
    total = config.get("generations")
    return EvolutionProgress(
        generations_done=int(done),
        generations_total=total if isinstance(total, int) else None,
        last_generation=last,
        active_task=names.get(active) if active is not None else None,
        candidates=int(count),
        pending=int(pending or 0),
        episodes=episode_saving(store, run_id),
        stage=stage,
    )


@dataclass(frozen=True)
class CandidateView:
    id: int
    kind: str
    generation: int
    slot: int
    genome_hash: str | None
    parents: list[int]
    omegas: list[float]
    mutation: dict[str, Any]
    status: str
    scores: dict[str, Any]
    episodes: tuple[int, int] | None = None  # selection episodes (played, planned), when counted


def _candidate_view(c: Candidate) -> CandidateView:
    return CandidateView(
        c.id,
        c.kind,
        c.generation,
        c.slot,
        c.genome_hash,
        list(c.parents or []),
        list(c.omegas or []),
        dict(c.mutation or {}),
        c.status,
        dict(c.scores or {}),
        (c.episodes_played or 0, c.episodes_planned) if c.episodes_planned is not None else None,
    )


def lineage(store: Store, candidate_id: int, max_depth: int = 12) -> dict[int, CandidateView]:
    """The candidate and its ancestors up to `max_depth` generations back, by id: one query per level."""
    found: dict[int, CandidateView] = {}
    frontier = {candidate_id}
    with store.session() as session:
        for _ in range(max_depth + 1):
            if not frontier:
                break
            for candidate in session.scalars(select(Candidate).where(Candidate.id.in_(frontier))):
                found[candidate.id] = _candidate_view(candidate)
            frontier = {p for c in found.values() for p in c.parents if p not in found}
    return found


@dataclass(frozen=True)
class ServerView:
    slot: int
    candidate_id: int | None
    candidate: str  # "child g7" etc., or "" when the server holds none of the run's candidates
    label: str
    swap_s: float
    updated_at: datetime


def server_views(store: Store, run_id: str) -> list[ServerView]:
    with store.session() as session:
        rows = session.execute(
            select(ServerState, Candidate.kind, Candidate.generation)
            .outerjoin(Candidate, Candidate.id == ServerState.candidate_id)
            .where(ServerState.run_id == run_id)
            .order_by(ServerState.slot)
        ).all()
        return [
            ServerView(
                s.slot,
                s.candidate_id,
                f"{kind} g{generation}" if kind else "",
                s.label,
                s.swap_s,
                s.updated_at,
            )
            for s, kind, generation in rows
        ]
