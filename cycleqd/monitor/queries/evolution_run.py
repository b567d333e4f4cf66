"""An evolution run's screen: its archives (heatmaps), QD metrics per generation, progress and what racing saved,
a candidate's lineage, and what each model server holds."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select

from cycleqd.db.schema import Archive, Candidate, CandidateKind, CandidateStatus, Cell, Generation, Run, ServerState
from cycleqd.db.store import Store
from cycleqd.evolver.archive import parse_cell_key
from cycleqd.run_config import EvolveRunConfig


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


def archive_views(store: Store, run_id: str) -> list[ArchiveView]:
    with store.session() as session:
        archives = list(session.scalars(select(Archive).where(Archive.run_id == run_id).order_by(Archive.task_index)))
        cells = session.execute(
            select(Cell).join(Archive, Archive.id == Cell.archive_id).where(Archive.run_id == run_id)
        ).scalars()
        by_archive: dict[int, dict[tuple[int, ...], CellView]] = defaultdict(dict)
        for cell in cells:
            view = CellView(cell.candidate_id, cell.quality, cell.generation)
            by_archive[cell.archive_id][parse_cell_key(cell.cell)] = view
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
        config, stage = EvolveRunConfig.read((row[0] if row else None) or {}), row[1] if row else None
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
        tasks = config.task_names
        names[active] = tasks[active] if active < len(tasks) else str(active)
    return EvolutionProgress(
        generations_done=int(done),
        generations_total=config.generations,
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
