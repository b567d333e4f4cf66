"""CycleQD's decisions as an ask/tell pair (../shared/ALGORITHM.md), apart from scoring and persisting.

`CycleQD.ask(generation, slot)` proposes a child: parents sampled from the active task's archive, crossed over and
mutated along that task's expert, every draw from (seed, generation, slot). `CycleQD.tell(offers)` offers measured
candidates to every archive in the order given and says what changed: each archive's report, the cells taken, the
archives' QD metrics. Neither touches a store, a server or a file but the genomes it is handed, so the algorithm
can be driven by any scorer (cycleqd/evolution/loop.py plays real episodes and persists every step; a test hands it
scores) and is tested in milliseconds.

A candidate rejected early by racing is told with the bounds of its scores instead of scores: it is never
inserted (no archive could take it), and its record says what each archive could at most have given it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cycleqd.evolver.archive import Elite, GridArchive, Insertion, paper_bc_range, parse_cell_key
from cycleqd.evolver.genome import Genome
from cycleqd.evolver.kinds import MutationKind
from cycleqd.evolver.operators import crossover, draw_omegas, gaussian_mutation, softmax_merge, svd_mutation
from cycleqd.evolver.qd_metrics import qd_metrics
from cycleqd.evolver.racing import early_rejection_records
from cycleqd.evolver.sampling import sample_parents
from cycleqd.evolver.svd_cache import SVDCache

# The config module reads the environment registry, which needs the Docker SDK; the algorithm runs where only
# torch is (a GPU machine), so the config is a type here and nothing more.
if TYPE_CHECKING:
    from cycleqd.evolver.config import EvolveConfig

SEARCH_STREAM = 1_000_003  # the search baseline's draws: a seed sequence no (seed, generation, slot) child uses


@dataclass(frozen=True)
class Proposal:
    """A genome to measure, with what made it: parents and crossover weights (a child), or merge weights over the
    experts (a random-search merge, `parents` empty), and its mutation's record."""

    genome: Genome
    active_task: int
    parents: tuple[int, ...]
    omegas: tuple[float, ...]
    mutation: dict


@dataclass(frozen=True)
class Offer:
    """A measured candidate: its selection scores by task name, or, rejected early, only their bounds."""

    candidate_id: int
    genome_hash: str
    scores: dict[str, float] | None
    bounds: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True)
class CellTaken:
    archive: int  # index into the archives, task order
    cell: tuple[int, ...]
    candidate_id: int
    quality: float


@dataclass(frozen=True)
class Told:
    """What a tell changed: per candidate, each archive's report (none for one rejected early) and its records as
    stored; the cells taken, the last taker of a cell only; every archive's QD metrics afterwards."""

    reports: dict[int, list[Insertion]]
    records: dict[int, list[dict]]
    taken: list[CellTaken]
    metrics: list[dict]


def active_task(generation: int, flip_interval: int, tasks: int) -> int:
    """The task whose archive gives parents and whose expert gives mutation directions (generation ≥ 1)."""
    return ((generation - 1) // flip_interval) % tasks


def bc_ranges(config: EvolveConfig, expert_scores: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """Each task's BC range, in task order: the config's, or the paper's rule over the experts' scores."""
    if config.bc_ranges is not None:
        return [(float(config.bc_ranges[n][0]), float(config.bc_ranges[n][1])) for n in config.task_names]
    return [paper_bc_range([row[j] for row in expert_scores]) for j in range(len(config.task_names))]


def empty_archives(config: EvolveConfig, ranges: Sequence[tuple[float, float]]) -> list[GridArchive]:
    """One archive per task, its BCs the other tasks' scores binned over their ranges."""
    names = tuple(config.task_names)
    return [
        GridArchive(k, names, config.bins, tuple(r for j, r in enumerate(ranges) if j != k)) for k in range(len(names))
    ]


class CycleQD:
    """The archives and the operators. `genome(hash)` gives a candidate's genome (the caller keeps them)."""

    def __init__(
        self,
        config: EvolveConfig,
        cache: SVDCache,
        archives: list[GridArchive],
        experts: Sequence[Elite],
        genome: Callable[[str], Genome],
    ) -> None:
        self.config = config
        self.cache = cache
        self.archives = archives
        self.experts = list(experts)  # in task order
        self.genome = genome
        self.names = config.task_names

    def restore(
        self,
        archives: Sequence[tuple[int, int, Sequence[Sequence[float]]]],
        cells: Iterable[tuple[int, str, Elite]],
        experts: Sequence[Elite],
    ) -> None:
        """The archives as a store holds them: (task index, bins, BC ranges) per archive in task order, each filled
        cell as (archive position, cell key, elite), and the experts that were scored on every task. The one way
        archives are set from outside: the algorithm alone writes into them afterwards (`tell`)."""
        self.archives = [
            GridArchive(task_index, self.names, bins, tuple((lo, hi) for lo, hi in ranges))
            for task_index, bins, ranges in archives
        ]
        for position, key, elite in cells:
            self.archives[position].elites[parse_cell_key(key)] = elite
        self.experts = list(experts)

    def ask(self, generation: int, slot: int) -> Proposal:
        """The child (generation, slot), from the archives as they stand."""
        q = active_task(generation, self.config.flip_interval, len(self.names))
        rng = np.random.default_rng([self.config.seed, generation, slot])
        # Experts that tie (all 0 on a small model) share one cell and only the first stays an elite; the experts
        # themselves come last in the fallback so that parents can still be drawn.
        fallback = [*(e for archive in self.archives for e in archive.ordered_elites()), *self.experts]
        sampler = self.config.sampler
        first, second = sample_parents(self.archives[q], rng, kind=sampler.kind, alpha_low=sampler.alpha_low,
                                       alpha_high=sampler.alpha_high, fallback=fallback)  # fmt: skip
        w1, w2 = draw_omegas(rng, self.config.crossover.mu, self.config.crossover.sigma)
        genome = crossover(self.genome(first.genome_hash), self.genome(second.genome_hash), w1, w2)
        genome, mutation = self.mutated(genome, q, rng)
        return Proposal(genome, q, (first.candidate_id, second.candidate_id), (w1, w2), mutation)

    def ask_random_merge(self, index: int) -> Proposal:
        """The random-search baseline's merge `index`: weights over the experts' task vectors from a flat Dirichlet,
        then the config's mutation along a uniformly drawn task's expert, as a child is mutated."""
        rng = np.random.default_rng([self.config.seed, SEARCH_STREAM, index])
        weights = rng.dirichlet(np.ones(len(self.names)))
        experts = [Genome.expert(self.cache, k) for k in range(len(self.names))]
        along = int(rng.integers(len(self.names)))
        genome, mutation = self.mutated(Genome.combine(experts, weights.tolist()), along, rng)
        return Proposal(genome, along, (), tuple(weights.tolist()), mutation)

    def mutated(self, genome: Genome, q: int, rng: np.random.Generator) -> tuple[Genome, dict]:
        """The config's mutation along task q's expert, and its record (kind, task, seed, strength)."""
        mutation = {"kind": self.config.mutation.kind, "task": self.names[q]}
        seed = int(rng.integers(2**31 - 1))
        if self.config.mutation.kind == MutationKind.SVD:
            genome = svd_mutation(genome, self.cache, q, self.config.mutation.w_max, seed)
            mutation |= {"seed": seed, "w_max": self.config.mutation.w_max}
        elif self.config.mutation.kind == MutationKind.GAUSSIAN:
            genome = gaussian_mutation(genome, self.config.mutation.std, seed)
            mutation |= {"seed": seed, "std": self.config.mutation.std}
        return genome, mutation

    def tell(self, offers: Sequence[Offer]) -> Told:
        """Offer each candidate, in the order given, to every archive."""
        reports: dict[int, list[Insertion]] = {}
        records: dict[int, list[dict]] = {}
        taken: dict[tuple[int, tuple[int, ...]], CellTaken] = {}
        for offer in offers:
            if offer.scores is None:
                assert offer.bounds is not None, "an offer without scores needs the bounds that rejected it"
                reports[offer.candidate_id] = []
                records[offer.candidate_id] = early_rejection_records(self.archives, offer.bounds)
                continue
            elite = Elite(offer.candidate_id, offer.genome_hash, tuple(offer.scores[name] for name in self.names))
            reports[offer.candidate_id] = [archive.offer(elite) for archive in self.archives]
            records[offer.candidate_id] = [r.as_record() for r in reports[offer.candidate_id]]
            for k, report in enumerate(reports[offer.candidate_id]):
                if report.status:
                    taken[(k, report.cell)] = CellTaken(k, report.cell, offer.candidate_id, report.new_quality)
        metrics = [qd_metrics(archive).as_record() for archive in self.archives]
        return Told(reports, records, list(taken.values()), metrics)

    def final_merge(self) -> tuple[Genome, list[int]]:
        """θ_final = θ_base + Σ_k softmax(f)_k τ_k over the archives' best elites (ties: `GridArchive.best`), and
        the ids of those elites."""
        experts = {e_k: expert for e_k, expert in enumerate(self.experts)}
        bests = [a.best(experts.get(a.task_index), self.config.seed) for a in self.archives]
        chosen = [(elite, archive) for elite, archive in zip(bests, self.archives, strict=True) if elite is not None]
        genome = softmax_merge([self.genome(e.genome_hash) for e, _ in chosen],
                               [e.scores[a.task_index] for e, a in chosen])  # fmt: skip
        return genome, [e.candidate_id for e, _ in chosen]
