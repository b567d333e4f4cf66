"""The CycleQD loop (../shared/ALGORITHM.md): experts seed one archive per task; each generation the active task
cycles, parents are sampled from its archive, crossed over and mutated as genomes, evaluated on every task's
selection split, and offered to every archive. At the end the archives' best elites are merged by softmax over
their qualities and measured on the test splits beside the base, the experts and the naive merge.

The algorithm's decisions are `evolver/algorithm.py`'s ask/tell pair (`CycleQD`); this module drives it: it asks
for a child and records it, has the evaluator score it (racing, reusing a measured genome), tells the algorithm
the scores and commits what the archives did, and says so to `on_event`.

Resume is exact: a generation's insertions commit in one transaction; a child is identified by (generation, slot)
and its row is found again on a resume (with its scores, if it had been evaluated), every random draw derives from
(seed, generation, slot), and the archives are rebuilt from the store. In synchronous mode W children are
proposed from the archives as they stand at the generation's start and inserted together in slot order, so a run
is bit-identical for a seed; in asynchronous mode each child is its own generation, dispatched to whichever server
is free and inserted when it is done.

Racing (evolver/racing.py, `racing:` in the config) stops scoring a child once no archive can take it; such a child
is recorded as rejected early, with the bounds of its scores instead of scores, and nothing downstream (archives,
cells, QD metrics, parents, the final model) ever reads a non-inserted child's scores. A child whose genome was
measured before in the run is not measured again: the earlier scores (or rejection) are reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np

from cycleqd.db.evolution_store import ArchiveSpec, CellUpdate, EvolutionStore
from cycleqd.db.schema import Candidate, CandidateKind, CandidateStatus
from cycleqd.evolver.algorithm import SEARCH_STREAM, CycleQD, Offer, Proposal, active_task, bc_ranges, empty_archives
from cycleqd.evolver.archive import Elite, GridArchive, Insertion, cell_key
from cycleqd.evolver.config import EvolveConfig, Mode
from cycleqd.evolver.genome import Genome
from cycleqd.evolver.operators import average_merge
from cycleqd.evolver.racing import Race, rejects
from cycleqd.evolver.svd_cache import SVDCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateUnderTest:
    candidate_id: int
    kind: CandidateKind
    genome: Genome | None
    genome_hash: str | None
    checkpoint: Path | None = None  # served as it is (the base, the experts); otherwise materialised from the genome


class CandidateEvaluator(Protocol):
    """Scores a candidate on every task; one candidate per slot (model server) at a time.

    An evaluator that races (`races` true) is given a `Race` for a child's selection episodes: it plans the race,
    starts episodes in the order `race.start_next` gives, reports each finished one (and those a previous process
    stored) with `race.observe`, and stops cleanly once `race.rejected`; the scores it then returns are not read.
    One that does not race is always given `race=None` and plays every episode.
    """

    slots: int
    races: bool

    async def evaluate(
        self, slot: int, candidate: CandidateUnderTest, test: bool, race: Race | None = None
    ) -> tuple[int | None, dict]: ...


@dataclass(frozen=True)
class Measured:
    """A candidate's selection scores; for a child racing stopped, only the bounds that ruled it out."""

    scores: dict[str, float] | None  # None: rejected early, its scores are unknown
    bounds: list[list[float]] | None = None
    episodes: tuple[int, int] | None = None  # (played, planned) selection episodes, when they were counted

    @property
    def rejected_early(self) -> bool:
        return self.scores is None


class EventKind(StrEnum):
    EXPERT = "expert"  # an expert measured on the selection splits (generation 0)
    CHILD = "child"  # a child measured, or rejected early by racing
    GENERATION = "generation"  # a generation committed: its insertions and the archives' metrics
    SEARCH = "search"  # a merge of the random-search baseline measured on the selection splits
    FINAL = "final"  # a row of the final table measured on the test splits


@dataclass(frozen=True)
class EvolutionEvent:
    kind: EventKind
    generation: int
    active_task: str | None = None
    candidate_id: int | None = None
    scores: dict[str, float] = field(default_factory=dict)
    insertions: list[Insertion] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    episodes: tuple[int, int] | None = None  # (played, planned) selection episodes of a child
    rejected_early: bool = False


@dataclass(frozen=True)
class FinalRow:
    label: str
    kind: CandidateKind
    candidate_id: int
    test_scores: dict[str, float]

    @property
    def average(self) -> float:
        return sum(self.test_scores.values()) / len(self.test_scores) if self.test_scores else 0.0


def search_label(merges: int) -> str:
    return f"random search (best of {merges})"


class Evolution:
    def __init__(
        self,
        config: EvolveConfig,
        evo: EvolutionStore,
        cache: SVDCache,
        genomes_dir: Path,
        evaluator: CandidateEvaluator,
        on_event: Callable[[EvolutionEvent], None] = lambda _: None,
    ) -> None:
        self.config = config
        self.evo = evo
        self.cache = cache
        self.genomes_dir = genomes_dir
        self.evaluator = evaluator
        self.on_event = on_event
        self.names = config.task_names
        self._genomes: dict[str, Genome] = {}
        self.algorithm = CycleQD(config, cache, [], [], self._genome)
        self._free_slots: asyncio.Queue[int] = asyncio.Queue()

    @property
    def archives(self) -> list[GridArchive]:
        return self.algorithm.archives

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[int]:
        """A model server of its own for one candidate's episodes, given back however they end."""
        slot = await self._free_slots.get()
        try:
            yield slot
        finally:
            self._free_slots.put_nowait(slot)

    # -- the whole run -------------------------------------------------------------------------------------------

    async def run(self) -> list[FinalRow]:
        for slot in range(self.evaluator.slots):
            self._free_slots.put_nowait(slot)
        await self.initialise()
        if self.config.mode is Mode.SYNC:
            await self._run_synchronously()
        else:
            await self._run_asynchronously()
        if self.config.baselines.search:
            await self.search()
        return await self.finalise()

    async def initialise(self) -> None:
        """Score the experts on all tasks, set the BC ranges from their scores, insert them (generation 0)."""
        experts = []
        for k, task in enumerate(self.config.tasks):
            genome = Genome.expert(self.cache, k)
            digest = genome.save(self.genomes_dir)
            self._genomes[digest] = genome
            row = self.evo.add_candidate(CandidateKind.EXPERT, 0, k, genome_hash=digest, mutation={"expert": task.name})
            experts.append((row, CandidateUnderTest(row.id, CandidateKind.EXPERT, genome, digest, Path(task.expert))))
        if 0 in self.evo.committed_generations():
            self._restore_archives()
            return
        measured = await asyncio.gather(*(self._measure(row, under) for row, under in experts))
        scored = [m.scores for m in measured if m.scores is not None]  # experts never race
        for (row, _), scores in zip(experts, scored, strict=True):
            self.on_event(EvolutionEvent(EventKind.EXPERT, 0, candidate_id=row.id, scores=scores))
        empty = empty_archives(self.config, bc_ranges(self.config, [[s[name] for name in self.names] for s in scored]))
        self.evo.create_archives(
            [ArchiveSpec(a.task_index, a.name, a.bins, list(a.bc_names), [list(r) for r in a.ranges]) for a in empty]
        )
        self._restore_archives()
        self._insert_and_commit(0, 0, [(row, m) for (row, _), m in zip(experts, measured, strict=True)])

    async def _run_synchronously(self) -> None:
        done = self.evo.committed_generations()
        for generation in range(1, self.config.generations + 1):
            if generation in done:
                continue
            q = active_task(generation, self.config.flip_interval, len(self.names))
            children = [self._child(generation, slot, q) for slot in range(self.evaluator.slots)]
            measured = await asyncio.gather(*(self._measure(row, under) for row, under in children))
            self._insert_and_commit(generation, q, [(row, m) for (row, _), m in zip(children, measured, strict=True)])

    async def _run_asynchronously(self) -> None:
        done = self.evo.committed_generations()
        todo = iter([g for g in range(1, self.config.generations + 1) if g not in done])

        async def worker() -> None:
            for generation in todo:  # one shared iterator: each generation goes to exactly one worker
                q = active_task(generation, self.config.flip_interval, len(self.names))
                row, under = self._child(generation, 0, q)
                self._insert_and_commit(generation, q, [(row, await self._measure(row, under))])

        await asyncio.gather(*(worker() for _ in range(self.evaluator.slots)))

    # -- one child -----------------------------------------------------------------------------------------------

    def _child(self, generation: int, slot: int, q: int) -> tuple[Candidate, CandidateUnderTest]:
        """The child (generation, slot): found in the store on a resume, otherwise asked for and recorded."""
        row = self.evo.find_candidate(CandidateKind.CHILD, generation, slot)
        if row is None:
            proposal = self.algorithm.ask(generation, slot)
            assert proposal.active_task == q
            row = self._record(CandidateKind.CHILD, generation, slot, proposal, active_task=q,
                               parents=list(proposal.parents), omegas=list(proposal.omegas))  # fmt: skip
        assert row.genome_hash is not None
        return row, CandidateUnderTest(row.id, CandidateKind.CHILD, self._genome(row.genome_hash), row.genome_hash)

    def _record(
        self, kind: CandidateKind, generation: int, slot: int, proposal: Proposal, **fields: object
    ) -> Candidate:
        """A proposal's genome saved and kept, and its candidate row."""
        digest = proposal.genome.save(self.genomes_dir)
        self._genomes[digest] = proposal.genome
        return self.evo.add_candidate(kind, generation, slot, genome_hash=digest, mutation=proposal.mutation,
                                      **fields)  # type: ignore[arg-type]  # fmt: skip

    # -- the equal-budget search baseline ------------------------------------------------------------------------

    async def search(self) -> None:
        """Random merges, as many as the evolution proposed children, each played in full on the selection splits:
        the baseline that knows what the evolution knows (the experts, the operators, as many selection episodes
        or more, since children may be raced). A merge's weights over the experts' task vectors are drawn from a
        flat Dirichlet, then it is mutated as a child is, along a uniformly drawn task's expert."""
        after = self.config.generations + 1
        proposed = [self._searched(after, i) for i in range(len(self.evo.candidates(CandidateKind.CHILD)))]
        measured = await asyncio.gather(*(self._measure(row, under) for row, under in proposed))
        for (row, _), m in zip(proposed, measured, strict=True):
            self.on_event(EvolutionEvent(EventKind.SEARCH, after, candidate_id=row.id, scores=m.scores or {}))

    def _searched(self, generation: int, index: int) -> tuple[Candidate, CandidateUnderTest]:
        row = self.evo.find_candidate(CandidateKind.SEARCH, generation, index)
        if row is None:
            proposal = self.algorithm.ask_random_merge(index)
            row = self._record(CandidateKind.SEARCH, generation, index, proposal, omegas=list(proposal.omegas))
        assert row.genome_hash is not None
        return row, CandidateUnderTest(row.id, CandidateKind.SEARCH, self._genome(row.genome_hash), row.genome_hash)

    def _search_best(self) -> Candidate | None:
        """The search's merge with the highest mean selection score; ties drawn with the run's seed."""
        rows = [row for row in self.evo.candidates(CandidateKind.SEARCH) if set(row.scores) == set(self.names)]
        if not rows:
            return None
        means = [sum(float(row.scores[n]) for n in self.names) / len(self.names) for row in rows]
        top = [row for row, mean in zip(rows, means, strict=True) if mean == max(means)]
        return top[int(np.random.default_rng([self.config.seed, SEARCH_STREAM]).integers(len(top)))]

    async def _measure(self, row: Candidate, under: CandidateUnderTest) -> Measured:
        """Selection scores of a candidate: from the store when a previous process measured it (or the same genome),
        otherwise from the evaluator, racing the archives when it is a child."""
        stored = self._stored(row) or self._reused(row)
        if stored is not None:
            return stored
        async with self._slot() as slot:
            race = None
            if row.kind == CandidateKind.CHILD and self.evaluator.races:
                race = Race(self.archives, self.config.racing.kind, self.config.racing.delta)  # the archives now
            model_id, scores = await self.evaluator.evaluate(slot, under, test=False, race=race)
        episodes = (race.played, race.planned) if race is not None else None
        if race is not None and race.rejected:
            bounds = [list(b) for b in race.bounds()]
            self.evo.record_early_rejection(row.id, model_id, bounds, (race.played, race.planned))
            measured = Measured(None, bounds, episodes)
        else:
            self.evo.record_scores(row.id, model_id, scores, test=False, episodes=episodes)
            measured = Measured(scores, episodes=episodes)
        if row.kind == CandidateKind.CHILD:
            self.on_event(EvolutionEvent(EventKind.CHILD, row.generation, self.names[row.active_task or 0], row.id,
                                         scores if measured.scores else {}, episodes=episodes,
                                         rejected_early=measured.rejected_early))  # fmt: skip
        return measured

    def _stored(self, row: Candidate) -> Measured | None:
        episodes = (row.episodes_played, row.episodes_planned) if row.episodes_planned is not None else None
        if row.status == CandidateStatus.REJECTED_EARLY and row.bounds is not None:
            return Measured(None, row.bounds, episodes)  # type: ignore[arg-type]
        if row.status != CandidateStatus.PENDING and set(row.scores) == set(self.names):
            return Measured({name: float(row.scores[name]) for name in self.names}, episodes=episodes)  # type: ignore[arg-type]
        return None

    def _reused(self, row: Candidate) -> Measured | None:
        """A genome measured before in this run is not measured again (0 episodes played for it): its scores are
        reused, or its early rejection, which still holds since the archives have only got better."""
        earlier = self.evo.measured_genome(row.genome_hash) if row.genome_hash else None
        if earlier is None or earlier.id == row.id:
            return None
        found = self._stored(earlier)
        if found is None:
            return None
        episodes = (0, found.episodes[1]) if found.episodes else None
        if found.scores is not None:
            self.evo.record_scores(row.id, earlier.model_id, found.scores, test=False, episodes=episodes)
            return Measured(found.scores, episodes=episodes)
        assert found.bounds is not None
        if not rejects(self.archives, found.bounds):
            return None  # e.g. a statistical rejection against other archives: race it afresh
        self.evo.record_early_rejection(row.id, earlier.model_id, found.bounds, episodes or (0, 0))
        return Measured(None, found.bounds, episodes)

    # -- archives ------------------------------------------------------------------------------------------------

    def _restore_archives(self) -> None:
        """The algorithm's archives as the store holds them (or as generation 0 made them), the experts scored on
        every task as its fallback parents."""
        rows = self.evo.archives()
        candidates = {c.id: c for c in self.evo.candidates()}
        position = {row.id: index for index, row in enumerate(rows)}
        self.algorithm.restore(
            [(row.task_index, row.bins, row.bc_ranges) for row in rows],
            [
                (position[cell.archive_id], cell.cell, self._elite(candidates[cell.candidate_id]))
                for cell in self.evo.cells()
            ],
            [
                self._elite(row)
                for row in self.evo.candidates(CandidateKind.EXPERT)
                if set(row.scores) == set(self.names)
            ],
        )

    def _elite(self, row: Candidate) -> Elite:
        assert row.genome_hash is not None
        return Elite(row.id, row.genome_hash, tuple(float(row.scores[name]) for name in self.names))

    def _insert_and_commit(self, generation: int, q: int, scored: list[tuple[Candidate, Measured]]) -> None:
        """Tell the algorithm each candidate's scores (in slot order); commit what the archives did in one
        transaction. A child rejected early is not offered: no archive could take it, whatever its unknown scores."""
        archive_ids = [row.id for row in self.evo.archives()]
        told = self.algorithm.tell(
            [Offer(row.id, row.genome_hash or "", measured.scores, measured.bounds) for row, measured in scored]
        )
        updates = [CellUpdate(archive_ids[t.archive], cell_key(t.cell), t.candidate_id, t.quality) for t in told.taken]
        self.evo.commit_generation(generation, q, told.records, updates, told.metrics)
        for row, measured in scored:
            self.on_event(EvolutionEvent(EventKind.GENERATION, generation, self.names[q], row.id, measured.scores or {},
                                         told.reports[row.id], told.metrics, measured.episodes,
                                         measured.rejected_early))  # fmt: skip

    def _genome(self, digest: str) -> Genome:
        if digest not in self._genomes:
            self._genomes[digest] = Genome.load(self.genomes_dir, digest)
        return self._genomes[digest]

    # -- the final model ----------------------------------------------------------------------------------------

    async def finalise(self) -> list[FinalRow]:
        """θ_final = θ_base + Σ_k softmax(f)_k τ_k over the archives' best elites; everything on the test splits."""
        final, parents = self.algorithm.final_merge()
        merge = average_merge(self.cache)
        after = self.config.generations + 1
        entries: list[tuple[str, Candidate, CandidateUnderTest]] = []
        base = self.evo.add_candidate(CandidateKind.BASE, after, 0)
        entries.append(("base", base, CandidateUnderTest(base.id, CandidateKind.BASE, None, None, self.cache.base)))
        for k, row in enumerate(self.evo.candidates(CandidateKind.EXPERT)):
            task = self.config.tasks[k]
            entries.append(
                (
                    f"expert {task.name}",
                    row,
                    CandidateUnderTest(row.id, CandidateKind.EXPERT, None, row.genome_hash, Path(task.expert)),
                )
            )
        for label, kind, genome, extra in (
            ("naive merge", CandidateKind.MERGE, merge, {}),
            ("CycleQD final", CandidateKind.FINAL, final, {"parents": parents}),
        ):
            digest = genome.save(self.genomes_dir)
            self._genomes[digest] = genome
            row = self.evo.add_candidate(kind, after, 0, genome_hash=digest, **extra)
            entries.append((label, row, CandidateUnderTest(row.id, kind, genome, digest)))
        searched = self._search_best() if self.config.baselines.search else None
        if searched is not None:
            assert searched.genome_hash is not None
            under = CandidateUnderTest(
                searched.id, CandidateKind.SEARCH, self._genome(searched.genome_hash), searched.genome_hash
            )
            entries.append((search_label(len(self.evo.candidates(CandidateKind.SEARCH))), searched, under))
        for index, (label, path) in enumerate(self.config.baselines.models.items()):
            row = self.evo.add_candidate(CandidateKind.BASELINE, after, index, mutation={"label": label})
            entries.append((label, row, CandidateUnderTest(row.id, CandidateKind.BASELINE, None, None, Path(path))))

        async def measure(label: str, row: Candidate, under: CandidateUnderTest) -> FinalRow:
            if set(row.test_scores) == set(self.names):
                return FinalRow(label, row.kind, row.id, dict(row.test_scores))
            async with self._slot() as slot:
                model_id, scores = await self.evaluator.evaluate(slot, under, test=True)
            self.evo.record_scores(row.id, model_id or row.model_id, scores, test=True)
            self.on_event(EvolutionEvent(EventKind.FINAL, after, candidate_id=row.id, scores=scores))
            return FinalRow(label, row.kind, row.id, scores)

        return list(await asyncio.gather(*(measure(*entry) for entry in entries)))
