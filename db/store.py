"""The store API the orchestrator, the CLI and the TUI use. No SQL strings live anywhere else.

Every episode is committed the moment it is recorded; the (run, model, task, repeat) key is unique, so a
resumed run that offers an episode again gets DuplicateEpisodeError instead of a second row. An episode still being
played has a row in `episodes_in_flight` (its rounds and tokens so far) that its commit removes in the same
transaction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Delete, Engine, Select, create_engine, delete, event, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cycleqd.db.run_time import env_seconds, run_seconds
from cycleqd.db.schema import (
    Aggregate,
    Episode,
    EpisodeInFlight,
    Generation,
    Model,
    Run,
    RunKind,
    RunSession,
    RunStatus,
    Task,
    utcnow,
)

MIGRATIONS = Path(__file__).with_name("migrations")


class DuplicateEpisodeError(Exception):
    """This (run, model, task, repeat) is already recorded."""


class NoSuchRunError(KeyError):
    """The store has no run with this id: it was never made, or was removed (`cycleqd runs rm`) while it ran."""

    def __str__(self) -> str:
        return str(self.args[0])  # a KeyError's own str() is its key's repr, quotes and all


@dataclass(frozen=True)
class EpisodeFilter:
    """Which of a run's episodes a reader wants; None means any."""

    model_ids: tuple[int, ...] | None = None
    env: str | None = None
    status: str | None = None
    min_score: float | None = None  # an unscored (env_error) episode never passes a score bound

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.model_ids is not None:
            query = query.where(Episode.model_id.in_(self.model_ids))
        if self.env is not None:
            query = query.where(Task.env == self.env)
        if self.status is not None:
            query = query.where(Episode.status == self.status)
        if self.min_score is not None:
            query = query.where(Episode.score >= self.min_score)
        return query


class EpisodeKey(NamedTuple):
    """What identifies an episode: the store holds at most one per key."""

    run_id: str
    model_id: int
    task_id: int
    repeat: int


@dataclass(frozen=True)
class EpisodeRecord:
    run_id: str
    model_id: int
    task_id: int
    repeat: int
    status: str
    score: float | None
    rounds: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    started_at: datetime | None = None
    context_messages: int = 0
    verdict: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeProgress:
    """Where an episode still being played stands: its model replies and tokens so far, and when this attempt began
    (a retried attempt begins again)."""

    rounds: int
    prompt_tokens: int
    completion_tokens: int
    started_at: datetime


# How long a writer waits for another's lock before SQLite gives up with SQLITE_BUSY: several writers (an eval, a
# `runs rm`, a second eval on the same store) queue instead of failing.
BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the TUI) never block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: a committed episode survives a process crash
    cursor.close()


def make_engine(path: Path | str) -> Engine:
    url = "sqlite://" if str(path) == ":memory:" else f"sqlite:///{Path(path).expanduser()}"
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


_MIGRATING = threading.Lock()  # Alembic's `context` is process-global: one migration at a time per process


@contextmanager
def _migration_lock(path: Path | str) -> Iterator[None]:
    """Across processes: two that open a new store at once would both create its tables.

    The lock is an flock on a file beside the store, where every process that can open the store reaches it (a
    temporary folder is not shared by two containers that share the store's volume). Its holder removes it before
    letting go, so nothing stays beside the store: a process that waited on the removed file finds the path gone
    or naming another file, and locks again, so two never hold it at once. (An flock on the store itself would
    need a descriptor of the file, and closing one drops this process's SQLite locks on it: see `_is_sqlite_file`.)
    """
    if str(path) == ":memory:":
        yield
        return
    lock = Path(f"{Path(path).expanduser()}.migrate-lock")
    handle = _locked(lock)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a file left behind (a folder we may not write) is still a valid lock
            lock.unlink()
        handle.close()  # after the removal: whoever waited on this file locks afresh


def _locked(lock: Path) -> TextIO:
    """The lock file, opened and flocked: the one at `lock` now, not one its holder removed while we waited."""
    while True:
        handle = open(lock, "a")  # noqa: SIM115 - held until the migration ends
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            handle.close()
            continue
        mine = os.fstat(handle.fileno())
        if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return handle
        handle.close()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def is_at_newest_schema(engine: Engine) -> bool:
    """Asked before `migrate`, so that opening a current store (every reading command) takes no lock file."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head


def migrate(engine: Engine, path: Path | str = ":memory:") -> None:
    """Bring the database to the newest schema (a new file gets the whole schema)."""
    config = _alembic_config()
    with _MIGRATING, _migration_lock(path), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- runs --------------------------------------------------------------------------------------------------

    def create_run(self, kind: RunKind, config: dict[str, Any]) -> Run:
        run = Run(id=secrets.token_hex(6), kind=kind, config=config, status=RunStatus.RUNNING)
        with self.session() as session:
            session.add(run)
        return run

    def get_run(self, run_id: str) -> Run | None:
        with self.session() as session:
            return session.get(Run, run_id)

    def list_runs(self, limit: int = 50) -> list[Run]:
        with self.session() as session:
            return list(session.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def set_run_stage(self, run_id: str, stage: str | None) -> None:
        """What the run is doing now (e.g. "building the SVD cache"), for the live views; None when it is plain."""
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is not None:
                run.stage = stage

    def runs_matching(self, prefix: str) -> list[str]:
        """Ids of the runs whose id starts with `prefix` (a full id matches itself)."""
        with self.session() as session:
            return list(session.scalars(select(Run.id).where(Run.id.startswith(prefix, autoescape=True))))

    def delete_run(self, run_id: str) -> int:
        """Remove a run and everything it owns (episodes, aggregates, archives, candidates, …); the episode count.
        Models and tasks stay: other runs may share them."""
        with self.session() as session:
            episodes = session.scalar(select(func.count()).where(Episode.run_id == run_id)) or 0
            session.execute(delete(Run).where(Run.id == run_id))  # foreign keys cascade
            return episodes

    def run_models(self, run_ids: list[str]) -> dict[str, list[Model]]:
        """Per run, the models that have episodes in it, in order of first appearance."""
        with self.session() as session:
            rows = session.execute(
                select(Episode.run_id, Model).join(Model, Episode.model_id == Model.id)
                .where(Episode.run_id.in_(run_ids)).group_by(Episode.run_id, Model.id).order_by(func.min(Episode.id))
            )  # fmt: skip
            found: dict[str, list[Model]] = {run_id: [] for run_id in run_ids}
            for run_id, model in rows:
                found[run_id].append(model)
            return found

    def set_run_status(self, run_id: str, status: RunStatus) -> None:
        """Running begins a session of the run (`RunSession`), any other status ends it: the run's time counts
        these only. A session still open when the run starts again was left by a process that died: it ends at
        its last stored work (an episode or a generation), not now, which would count the time it lay dead."""
        now = utcnow()
        with self.session() as session:
            run = _stored_run(session, run_id)
            run.status = status
            run.finished_at = None if status == RunStatus.RUNNING else now
            open_ = session.scalar(select(RunSession).where(RunSession.run_id == run_id, RunSession.ended_at.is_(None)))
            if open_ is not None:
                open_.ended_at = _last_work(session, run_id, open_.started_at) if status == RunStatus.RUNNING else now
            if status == RunStatus.RUNNING:
                number = session.scalar(select(func.max(RunSession.number)).where(RunSession.run_id == run_id)) or 0
                session.add(RunSession(run_id=run_id, number=number + 1, started_at=now))
            # Starting or stopping, none of the run's episodes is being played: rows a killed process left go now.
            session.execute(delete(EpisodeInFlight).where(EpisodeInFlight.run_id == run_id))

    def run_seconds(self, run_id: str, now: datetime | None = None) -> float:
        """The run's time (db/run_time.py: the sum of its sessions), one still under way counted up to `now`."""
        with self.session() as session:
            run = _stored_run(session, run_id)
            return run_seconds(session, [run], now or utcnow())[run_id]

    # -- models and tasks ----------------------------------------------------------------------------------------

    def model_id(self, identity: str, reference: str, genome_hash: str | None = None) -> int:
        with self.session() as session:
            found = session.scalar(select(Model).where(Model.identity == identity))
            if found is None:
                found = Model(identity=identity, reference=reference, genome_hash=genome_hash)
                session.add(found)
                session.flush()
            return found.id

    def task_id(self, env: str, suite: str, split: str, task_key: str, content_hash: str) -> int:
        key = {"env": env, "suite": suite, "split": split, "task_key": task_key, "content_hash": content_hash}
        with self.session() as session:
            found = session.scalar(select(Task).filter_by(**key))
            if found is None:
                found = Task(**key)
                session.add(found)
                session.flush()
            return found.id

    def tasks(self) -> list[Task]:
        with self.session() as session:
            return list(session.scalars(select(Task).order_by(Task.id)))

    # -- episodes ----------------------------------------------------------------------------------------------

    def record_episode(self, record: EpisodeRecord) -> int:
        """Commit one finished episode now, and in the same transaction drop its row in flight, so that a reader
        sees it either in flight or committed, never both or neither. DuplicateEpisodeError if its key is already
        there (then nothing changes)."""
        values = {k: v for k, v in record.__dict__.items() if v is not None or k in ("score", "error")}
        values["started_at"] = record.started_at or utcnow()
        try:
            with self.session() as session:
                episode = Episode(**values, finished_at=utcnow())
                session.add(episode)
                session.flush()
                session.execute(_delete_in_flight(EpisodeKey(record.run_id, record.model_id, record.task_id,
                                                          record.repeat)))  # fmt: skip
                return episode.id
        except IntegrityError as exc:
            if "UNIQUE" in str(exc.orig):
                raise DuplicateEpisodeError(
                    f"run {record.run_id}: model {record.model_id}, task {record.task_id}, repeat {record.repeat}"
                ) from exc
            raise

    def record_in_flight(self, key: EpisodeKey, progress: EpisodeProgress) -> None:
        """Where an episode not yet committed stands: its row made or updated in one statement (once a round)."""
        values = {"rounds": progress.rounds, "prompt_tokens": progress.prompt_tokens,
                  "completion_tokens": progress.completion_tokens, "started_at": progress.started_at,
                  "updated_at": utcnow()}  # fmt: skip
        upsert = sqlite_insert(EpisodeInFlight).values(**key._asdict(), **values)
        upsert = upsert.on_conflict_do_update(index_elements=list(EpisodeKey._fields), set_=values)
        with self.session() as session:
            session.execute(upsert)

    def drop_in_flight(self, key: EpisodeKey) -> None:
        """An episode that ends uncommitted (cancelled, failed, or stored first by another process) is not in flight."""
        with self.session() as session:
            session.execute(_delete_in_flight(key))

    def done_keys(self, run_id: str) -> set[EpisodeKey]:
        """The key of every episode of the run already recorded: what a resume skips."""
        with self.session() as session:
            rows = session.execute(
                select(Episode.model_id, Episode.task_id, Episode.repeat).where(Episode.run_id == run_id)
            )
            return {EpisodeKey(run_id, m, t, r) for m, t, r in rows}

    def episodes(self, run_id: str) -> list[Episode]:
        with self.session() as session:
            query = select(Episode).where(Episode.run_id == run_id).order_by(Episode.id)
            return list(session.scalars(query))

    def count_episodes(self, run_id: str, where: EpisodeFilter = EpisodeFilter()) -> int:
        with self.session() as session:
            query = select(func.count()).select_from(Episode).join(Task).where(Episode.run_id == run_id)
            return session.scalar(where.apply(query)) or 0

    def iter_episodes(
        self, run_id: str, where: EpisodeFilter = EpisodeFilter(), batch: int = 200
    ) -> Iterator[tuple[Episode, Task, Model]]:
        """A run's episodes with their task and model, in id order, read `batch` rows at a time so that an export
        of a large run holds one batch of transcripts in memory, not the run."""
        last_id = 0
        while True:
            with self.session() as session:
                query = (
                    select(Episode, Task, Model).join(Task, Episode.task_id == Task.id)
                    .join(Model, Episode.model_id == Model.id)
                    .where(Episode.run_id == run_id, Episode.id > last_id).order_by(Episode.id).limit(batch)
                )  # fmt: skip
                rows = [tuple(row) for row in session.execute(where.apply(query))]
            if not rows:
                return
            yield from rows  # type: ignore[misc]
            last_id = rows[-1][0].id

    def task_scores(self, run_id: str) -> list[tuple[int, str, str, str, float | None, str]]:
        """(model id, env, split, task key, score, status) of every episode of a run, without transcripts."""
        with self.session() as session:
            query = (
                select(Episode.model_id, Task.env, Task.split, Task.task_key, Episode.score, Episode.status)
                .join(Task, Episode.task_id == Task.id).where(Episode.run_id == run_id).order_by(Episode.id)
            )  # fmt: skip
            return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]

    def wall_times(self, run_id: str) -> dict[tuple[int, str, str], float]:
        """Per (model, env, split), in seconds, the time that environment took, not the whole run's: within each
        session from its first episode's start to its last one's end, summed (db/run_time.py), as every view
        shows it."""
        with self.session() as session:
            return env_seconds(session, run_id)

    def episode_scores(self, run_id: str, model_id: int, task_ids: list[int]) -> list[float | None]:
        """Scores of a model's episodes on these tasks (None for an environment error), without transcripts."""
        with self.session() as session:
            query = select(Episode.score).where(
                Episode.run_id == run_id, Episode.model_id == model_id, Episode.task_id.in_(task_ids)
            )
            return list(session.scalars(query))

    def adopt_episodes(self, run_id: str, model_id: int, task_ids: list[int], donors: list[str]) -> int:
        """Copy into `run_id`, in one transaction, the scored episodes of `model_id` on these tasks that a donor run
        played and `run_id` lacks (the first donor holding one wins); how many were copied. For runs whose episodes
        are played alike (deterministic decoding, one measurement), where a copy is what playing again would give.
        Environment errors were never scored and are not copied. A copy took no time in this run (its start and end
        are now) and names its donor in its verdict."""
        copied = 0
        with self.session() as session:
            mine = (Episode.model_id == model_id, Episode.task_id.in_(task_ids))
            have = set(session.execute(select(Episode.task_id, Episode.repeat).where(Episode.run_id == run_id, *mine)))
            for donor in donors:
                query = select(Episode).where(Episode.run_id == donor, Episode.score.is_not(None), *mine)
                for episode in session.scalars(query).all():
                    if (episode.task_id, episode.repeat) in have:
                        continue
                    have.add((episode.task_id, episode.repeat))
                    values = {c.key: getattr(episode, c.key) for c in Episode.__table__.columns}
                    values |= {"id": None, "run_id": run_id, "started_at": utcnow(), "finished_at": utcnow(),
                               "verdict": {**episode.verdict, "adopted_from": donor}}  # fmt: skip
                    session.add(Episode(**values))
                    copied += 1
        return copied

    def scored_tasks(self, run_id: str) -> list[tuple[int, str, str, str, float]]:
        """(model, env, split, task key, score) of every scored episode of the run (environment errors left out):
        what confidence intervals resample."""
        with self.session() as session:
            query = (
                select(Episode.model_id, Task.env, Task.split, Task.task_key, Episode.score)
                .join(Task, Episode.task_id == Task.id)
                .where(Episode.run_id == run_id, Episode.score.is_not(None))
            )
            return [(m, env, split, key, float(score)) for m, env, split, key, score in session.execute(query)]

    # -- aggregates --------------------------------------------------------------------------------------------

    def save_aggregate(self, aggregate: Aggregate) -> None:
        with self.session() as session:
            session.merge(aggregate)

    def aggregates(self, run_id: str) -> list[Aggregate]:
        with self.session() as session:
            query = select(Aggregate).where(Aggregate.run_id == run_id).order_by(Aggregate.env, Aggregate.split)
            return list(session.scalars(query))


def _stored_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NoSuchRunError(f"no run {run_id!r} in the store")
    return run


def _delete_in_flight(key: EpisodeKey) -> Delete:
    """The statement that drops the row in flight of the episode `key` (none there: it does nothing)."""
    return delete(EpisodeInFlight).where(
        *(getattr(EpisodeInFlight, name) == value for name, value in key._asdict().items())
    )


def _last_work(session: Session, run_id: str, since: datetime) -> datetime:
    """When the run's last episode or generation since `since` was stored; `since` when none was."""
    ends = [
        session.scalar(select(func.max(column)).where(column >= since, run == run_id))
        for column, run in ((Episode.finished_at, Episode.run_id), (Generation.finished_at, Generation.run_id))
    ]
    return max([since, *(end for end in ends if end is not None)])


class StoreOpenError(Exception):
    """The store's file cannot be opened (or created); the message says why and what to do."""


def store_trouble(exc: DatabaseError) -> str | None:
    """What is wrong with the store itself, as one line saying what to do, when SQLite's error code names it: a lock
    held past the busy timeout, a damaged file, one we may not write, a full disk. None for anything else (a broken
    constraint, a statement SQLite refused): that is a bug in cycleqd, not the store's state. Read from the code,
    not the message, whose wording differs between SQLite's versions; the code is the extended one (Python 3.11+),
    whose low byte is the primary code."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    if primary == sqlite3.SQLITE_BUSY:
        return (f"the store is locked ({exc.orig}): another cycleqd process held it for over "
                f"{BUSY_TIMEOUT_MS / 1000:g} s; wait for that one to finish, or use another --db")  # fmt: skip
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return f"the store is damaged ({exc.orig}); restore it from a copy, or use another --db"
    if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return f"cannot write to the store ({exc.orig}); check its permissions and its folder's, or use another --db"
    if primary == sqlite3.SQLITE_FULL:
        return f"cannot write to the store ({exc.orig}): its disk is full; free space, or use another --db"
    return None


def check_store_file(path: Path) -> None:
    """StoreOpenError unless `path` is an existing SQLite file; reads its header and creates nothing."""
    if not path.is_file():
        raise StoreOpenError(
            f"{path}: no such store; a run creates it (e.g. `cycleqd eval --db {path}`), or pass --db with yours"
        )
    if not os.access(path, os.R_OK):
        raise StoreOpenError(f"{path}: cannot read the store: {os.strerror(errno.EACCES)}")
    if path.stat().st_size == 0 or not _is_sqlite_file(path):
        raise StoreOpenError(f"{path}: not an SQLite database; pass --db with a cycleqd store, or a new file name")


def _is_sqlite_file(path: Path) -> bool:
    """Asked of SQLite itself, never by opening the file in Python: closing any descriptor of a file drops every
    POSIX lock this process holds on it, so a store still open here (an engine not yet collected) lost its
    locks; another process then took itself for the last user, deleted the -wal and -shm files, and this
    process's next connection read the stale shared index as "database disk image is malformed". SQLite keeps
    its own descriptors open while the file is locked. `immutable`: no lock taken, no -wal or -shm created.
    Only "not a database" answers no: a store whose WAL is being checkpointed while the probe reads it can look
    "malformed" to a reader that takes no lock, and true damage is reported when the store is opened for real."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)) as probe:
            probe.execute("PRAGMA schema_version")
    except sqlite3.DatabaseError as exc:
        return exc.sqlite_errorcode != sqlite3.SQLITE_NOTADB
    return True


def check_store_path(path: Path | str, *, create: bool = True) -> None:
    """The checks `open_store` makes before it touches anything, for a command that opens the store later."""
    if str(path) == ":memory:":
        return
    where = Path(path).expanduser()
    if not where.parent.is_dir():
        raise StoreOpenError(f"{path}: cannot open the store: the folder {Path(path).parent} does not exist")
    if not (create and (not where.exists() or where.stat().st_size == 0)):
        check_store_file(where)


def open_store(path: Path | str, *, create: bool = True) -> Store:
    """Open the store at `path`, migrating it to the newest schema; a new file is created when `create`.
    StoreOpenError (one line, with the fix) for a missing folder, a foreign or read-only file."""
    check_store_path(path, create=create)  # before any lock file is made beside a file that is not ours
    engine = make_engine(path)
    try:
        if not is_at_newest_schema(engine):
            migrate(engine, path)
    except DatabaseError as exc:
        engine.dispose()
        trouble = store_trouble(exc)
        if trouble is None:
            raise
        raise StoreOpenError(f"{path}: {trouble}") from None
    return Store(engine)
