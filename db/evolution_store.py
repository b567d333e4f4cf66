"""The store API of one evolution run: archives, candidates and their lineage, cells, generations, servers.

A generation's insertions, its candidates' final status and its QD metrics are committed in one transaction
(`commit_generation`), so a run killed at any point either has a generation entirely or not at all: a resume
re-plays an uncommitted generation and can never insert a child twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cycleqd.db.schema import Archive, Candidate, CandidateKind, CandidateStatus, Cell, Generation, ServerState, utcnow
from cycleqd.db.store import Store


@dataclass(frozen=True)
class ArchiveSpec:
    task_index: int
    task_name: str
    bins: int
    bc_tasks: list[str]
    bc_ranges: list[list[float]]


@dataclass(frozen=True)
class CellUpdate:
    archive_id: int
    cell: str
    candidate_id: int
    quality: float


class EvolutionStore:
    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    # -- archives ----------------------------------------------------------------------------------------------

    def create_archives(self, specs: list[ArchiveSpec]) -> list[Archive]:
        """The run's archives; created on the first call, returned unchanged on a resume."""
        with self.store.session() as session:
            if session.scalar(select(Archive.id).where(Archive.run_id == self.run_id)) is None:
                session.add_all(Archive(run_id=self.run_id, **spec.__dict__) for spec in specs)
        return self.archives()

    def archives(self) -> list[Archive]:
        with self.store.session() as session:
            query = select(Archive).where(Archive.run_id == self.run_id).order_by(Archive.task_index)
            return list(session.scalars(query))

    def cells(self) -> list[Cell]:
        with self.store.session() as session:
            query = (
                select(Cell)
                .join(Archive, Archive.id == Cell.archive_id)
                .where(Archive.run_id == self.run_id)
                .order_by(Cell.archive_id, Cell.cell)
            )
            return list(session.scalars(query))

    # -- candidates --------------------------------------------------------------------------------------------

    def add_candidate(self, kind: str, generation: int, slot: int, **fields: Any) -> Candidate:
        """The candidate (kind, generation, slot) of this run; an existing row is returned as it is, so a resumed
        run that proposes the same child again finds its earlier row (and scores) instead of a second one."""
        key = {"run_id": self.run_id, "kind": kind, "generation": generation, "slot": slot}
        with self.store.session() as session:
            found = session.scalar(select(Candidate).filter_by(**key))
            if found is None:
                found = Candidate(**key, **fields)
                session.add(found)
                session.flush()
            return found

    def find_candidate(self, kind: str, generation: int, slot: int) -> Candidate | None:
        key = {"run_id": self.run_id, "kind": kind, "generation": generation, "slot": slot}
        with self.store.session() as session:
            return session.scalar(select(Candidate).filter_by(**key))

    def candidate(self, candidate_id: int) -> Candidate | None:
        with self.store.session() as session:
            return session.get(Candidate, candidate_id)

    def candidates(self, kind: str | None = None) -> list[Candidate]:
        with self.store.session() as session:
            query = select(Candidate).where(Candidate.run_id == self.run_id)
            if kind is not None:
                query = query.where(Candidate.kind == kind)
            return list(session.scalars(query.order_by(Candidate.generation, Candidate.slot, Candidate.id)))

    def record_scores(
        self,
        candidate_id: int,
        model_id: int | None,
        scores: dict[str, float],
        test: bool,
        episodes: tuple[int, int] | None = None,
    ) -> None:
        """A candidate's scores; `episodes` (played, planned) of its selection episodes when they were counted."""
        with self.store.session() as session:
            candidate = self._get(session, candidate_id)
            candidate.model_id = model_id
            if test:
                candidate.test_scores = scores
            else:
                candidate.scores = scores
                candidate.status = (
                    CandidateStatus.EVALUATED if candidate.status == CandidateStatus.PENDING else candidate.status
                )
                candidate.evaluated_at = utcnow()
                if episodes is not None:
                    candidate.episodes_played, candidate.episodes_planned = episodes

    def record_early_rejection(
        self, candidate_id: int, model_id: int | None, bounds: list[list[float]], episodes: tuple[int, int]
    ) -> None:
        """A child racing stopped: no scores (they are unknown), the bounds that ruled every archive out."""
        with self.store.session() as session:
            candidate = self._get(session, candidate_id)
            candidate.model_id = model_id
            candidate.scores = {}
            candidate.bounds = bounds
            candidate.status = CandidateStatus.REJECTED_EARLY
            candidate.episodes_played, candidate.episodes_planned = episodes
            candidate.evaluated_at = utcnow()

    def measured_genome(self, genome_hash: str) -> Candidate | None:
        """The earliest expert or child of this run with this genome that was measured (scored, or rejected early)."""
        with self.store.session() as session:
            query = (
                select(Candidate)
                .where(
                    Candidate.run_id == self.run_id,
                    Candidate.genome_hash == genome_hash,
                    Candidate.kind.in_((CandidateKind.EXPERT, CandidateKind.CHILD)),
                    Candidate.status != CandidateStatus.PENDING,
                )
                .order_by(Candidate.id)
            )
            return session.scalars(query).first()

    def _get(self, session: Session, candidate_id: int) -> Candidate:
        candidate = session.get(Candidate, candidate_id)
        if candidate is None:
            raise KeyError(f"no candidate {candidate_id} in run {self.run_id}")
        return candidate

    # -- generations -------------------------------------------------------------------------------------------

    def commit_generation(
        self,
        number: int,
        active_task: int,
        insertions: dict[int, list[dict[str, Any]]],
        updates: list[CellUpdate],
        metrics: list[dict[str, Any]],
    ) -> None:
        """One transaction: every candidate's insertion report, the cells it took, the generation's metrics."""
        with self.store.session() as session:
            if session.get(Generation, (self.run_id, number)) is not None:
                raise ValueError(f"generation {number} of run {self.run_id} is already committed")
            for candidate_id, report in insertions.items():
                candidate = self._get(session, candidate_id)
                if candidate.status != CandidateStatus.REJECTED_EARLY:  # that status says more: it stays
                    candidate.status = CandidateStatus.INSERTED
                candidate.insertions = report
            for update in updates:
                cell = session.get(Cell, (update.archive_id, update.cell))
                if cell is None:
                    session.add(Cell(**update.__dict__, generation=number))
                else:
                    cell.candidate_id, cell.quality, cell.generation = update.candidate_id, update.quality, number
            session.add(Generation(run_id=self.run_id, number=number, active_task=active_task, metrics=metrics))

    def generations(self) -> list[Generation]:
        with self.store.session() as session:
            query = select(Generation).where(Generation.run_id == self.run_id).order_by(Generation.number)
            return list(session.scalars(query))

    def committed_generations(self) -> set[int]:
        with self.store.session() as session:
            return set(session.scalars(select(Generation.number).where(Generation.run_id == self.run_id)))

    # -- servers -----------------------------------------------------------------------------------------------

    def set_server(self, slot: int, candidate_id: int | None, label: str, swap_s: float) -> None:
        with self.store.session() as session:
            state = ServerState(run_id=self.run_id, slot=slot, candidate_id=candidate_id, label=label, swap_s=swap_s,
                                updated_at=utcnow())  # fmt: skip
            session.merge(state)

    def server_states(self) -> list[ServerState]:
        with self.store.session() as session:
            query = select(ServerState).where(ServerState.run_id == self.run_id).order_by(ServerState.slot)
            return list(session.scalars(query))
