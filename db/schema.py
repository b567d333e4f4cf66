"""The schema: runs, models, tasks, episodes (and those still in flight) and per-(run, model, env, split) aggregates.

An episode is unique by (run, model, task, repeat): a resumed run can never count one twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment written in UTC and read back aware of it: SQLite keeps no zone, so every reader once had to add it
    by hand. A naive moment is refused on the way in (whose clock would it be?)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive moment ({value}) for a UTC column: give it a zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_column(kind: type[StrEnum], length: int, default: StrEnum | None = None) -> Any:  # noqa: ANN401
    """A StrEnum (a status, a kind) stored as its value in a VARCHAR, read back as the enum (no CHECK constraint:
    a new member needs no migration); any other string is refused on the way in."""
    column_type = Enum(kind, native_enum=False, create_constraint=False, length=length, validate_strings=True,
                       values_callable=lambda members: [m.value for m in members])  # fmt: skip
    return mapped_column(column_type, default=default) if default is not None else mapped_column(column_type)


class RunKind(StrEnum):
    EVAL = "eval"
    EVOLVE = "evolve"
    BENCH = "bench"  # a bench/ script's measurement


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # stopped by an error; resumable
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C or SIGTERM; resumable


class CandidateKind(StrEnum):
    EXPERT = "expert"
    CHILD = "child"
    BASE = "base"  # the final table's rows from here on
    MERGE = "merge"  # the naive merge
    FINAL = "final"  # the CycleQD model
    SEARCH = "search"  # a merge of the random-search baseline (its best is also a final-table row)
    BASELINE = "baseline"  # a checkpoint measured as it is, labelled in `mutation`


class CandidateStatus(StrEnum):
    PENDING = "pending"
    EVALUATED = "evaluated"
    INSERTED = "inserted"  # offered to the archives, its generation committed
    REJECTED_EARLY = "rejected_early"  # racing stopped it: bounds, no scores


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[RunKind] = enum_column(RunKind, 16)
    status: Mapped[RunStatus] = enum_column(RunStatus, 16, RunStatus.RUNNING)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stage: Mapped[str | None] = mapped_column(String(64))  # what a running run does now, when it is not obvious

    episodes: Mapped[list[Episode]] = relationship(back_populates="run", cascade="all, delete-orphan")


class RunSession(Base):
    """One stretch of a run's work, from its start or a resume to the moment it completed, failed or was
    interrupted: a run's time is the sum of these (db/run_time.py), so the idle hours before a resume count for
    nothing. `ended_at` is None while it runs; a process that died without ending it has its session ended at its
    last stored work when the run is resumed (Store.set_run_status)."""

    __tablename__ = "run_sessions"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1 for the run's start, then each resume
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(128), unique=True)  # checkpoint content hash, or endpoint/hub name
    reference: Mapped[str] = mapped_column(Text)  # what the user typed or where the checkpoint lives
    genome_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("env", "suite", "split", "task_key", "content_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    env: Mapped[str] = mapped_column(String(16))
    suite: Mapped[str] = mapped_column(String(256))
    split: Mapped[str] = mapped_column(String(32))
    task_key: Mapped[str] = mapped_column(String(256))  # the task's id inside its suite
    content_hash: Mapped[str] = mapped_column(String(64))


class Episode(Base):
    __tablename__ = "episodes"
    __table_args__ = (UniqueConstraint("run_id", "model_id", "task_id", "repeat"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(24))
    score: Mapped[float | None] = mapped_column(Float)  # None for an environment error: never scored
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    transcript: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    # How many leading transcript messages the environment wrote before the model's first reply (the prompt, and
    # AgentBench's one-shot turns): context, not the model's actions.
    context_messages: Mapped[int] = mapped_column(Integer, default=0)
    # Why it was graded so: the model's answer, what was expected, and the grader's detail.
    verdict: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="episodes")
    model: Mapped[Model] = relationship()
    task: Mapped[Task] = relationship()


class EpisodeInFlight(Base):
    """Where an episode not yet committed stands, for the monitor: made as it begins and updated after each model
    reply (one statement a round), deleted in the transaction that commits its episode, when it is abandoned, and
    whenever its run starts or stops (so a killed process leaves none behind a resume). The episode's unique key
    stays the truth: a reader leaves out a row whose episode is committed."""

    __tablename__ = "episodes_in_flight"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    repeat: Mapped[int] = mapped_column(Integer, primary_key=True)
    rounds: Mapped[int] = mapped_column(Integer, default=0)  # model replies so far
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # this attempt's start
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Aggregate(Base):
    __tablename__ = "aggregates"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    env: Mapped[str] = mapped_column(String(16), primary_key=True)
    split: Mapped[str] = mapped_column(String(32), primary_key=True)
    episodes: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float)  # over scored episodes; None: none was (db/scores.py)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)


# -- evolution (CycleQD) ----------------------------------------------------------------------------------------


class Archive(Base):
    """One MAP-Elites grid per task: quality = that task's score, BCs = the other tasks' scores, binned."""

    __tablename__ = "archives"
    __table_args__ = (UniqueConstraint("run_id", "task_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    task_index: Mapped[int] = mapped_column(Integer)
    task_name: Mapped[str] = mapped_column(String(64))
    bins: Mapped[int] = mapped_column(Integer)
    bc_tasks: Mapped[list[str]] = mapped_column(JSON, default=list)  # the tasks whose scores are the BCs
    bc_ranges: Mapped[list[list[float]]] = mapped_column(JSON, default=list)  # [lo, hi] per BC


class Candidate(Base):
    """A model the evolution made or measured: an expert, a child, the base, a merge or the final model.

    `genome_hash` names its recipe on disk (none for the base); `parents`, `omegas` and `mutation` are its lineage;
    `scores` are per-task selection scores, `test_scores` held-out ones; `insertions` says what each archive did.
    A child racing stopped early (status rejected_early) has no scores, only `bounds`: per task the [lo, hi] its
    final score could still reach when no archive could take it any more.
    """

    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("run_id", "kind", "generation", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[CandidateKind] = enum_column(CandidateKind, 16)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    slot: Mapped[int] = mapped_column(Integer, default=0)
    genome_hash: Mapped[str | None] = mapped_column(String(64))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    active_task: Mapped[int | None] = mapped_column(Integer)
    parents: Mapped[list[int]] = mapped_column(JSON, default=list)
    omegas: Mapped[list[float]] = mapped_column(JSON, default=list)
    mutation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[CandidateStatus] = enum_column(CandidateStatus, 16, CandidateStatus.PENDING)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    test_scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    insertions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    episodes_played: Mapped[int | None] = mapped_column(Integer)  # selection episodes (None: not counted)
    episodes_planned: Mapped[int | None] = mapped_column(Integer)
    bounds: Mapped[list[list[float]] | None] = mapped_column(JSON)  # per task [lo, hi]; set when rejected early
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Cell(Base):
    """The elite of one archive cell. `cell` is the bin index per BC, joined by commas ("3,7")."""

    __tablename__ = "cells"

    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True)
    cell: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    quality: Mapped[float] = mapped_column(Float)
    generation: Mapped[int] = mapped_column(Integer)  # when this elite took the cell


class Generation(Base):
    """A committed generation: its active task and the QD metrics of every archive after its insertions."""

    __tablename__ = "generations"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    active_task: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # per archive: coverage, qd, best
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ServerState(Base):
    """What each model server of an evolution holds now, and how long its last swap took."""

    __tablename__ = "server_states"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    label: Mapped[str] = mapped_column(Text, default="")
    swap_s: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
