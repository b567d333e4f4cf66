"""CycleQD's ask/tell pair driven with scores a test chooses: no store, no server, no episode. Each test takes
milliseconds once the tiny family's SVD cache exists; the loop's tests (tests/test_evolution_loop.py) keep the
same logic honest against materialised weights and a real store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cycleqd.evolver.algorithm import CycleQD, Offer, active_task, bc_ranges, empty_archives
from cycleqd.evolver.archive import Elite
from cycleqd.evolver.genome import Genome
from cycleqd.evolver.operators import softmax_merge
from cycleqd.evolver.svd_cache import SVDCache, build_svd_cache
from tests.evolution_probe import TASKS, make_tiny_family, probe_config

EXPERT_SCORES = ([0.6, 0.1, 0.2], [0.2, 0.5, 0.1], [0.1, 0.2, 0.4])


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], SVDCache]:
    root = tmp_path_factory.mktemp("algorithm")
    base, experts = make_tiny_family(root)
    return base, experts, build_svd_cache(base, experts, root / "cache", progress=False)


def seeded(family: tuple[Path, list[Path], SVDCache], **settings: object) -> tuple[CycleQD, dict[str, Genome]]:
    """A CycleQD whose archives hold the three experts (generation 0), told with EXPERT_SCORES."""
    base, experts, cache = family
    config = probe_config(base, experts, **{"generations": 30, "bins": 4, "seed": 3, **settings})
    genomes = {}
    elites = []
    for k, scores in enumerate(EXPERT_SCORES):
        genome = Genome.expert(cache, k)
        genomes[genome.content_hash()] = genome
        elites.append(Elite(k + 1, genome.content_hash(), tuple(scores)))
    archives = empty_archives(config, bc_ranges(config, EXPERT_SCORES))
    algorithm = CycleQD(config, cache, archives, elites, genomes.__getitem__)
    algorithm.tell([Offer(e.candidate_id, e.genome_hash, dict(zip(TASKS, e.scores, strict=True))) for e in elites])
    return algorithm, genomes


def made_up_scores(genome: Genome) -> dict[str, float]:
    """A score per task that any genome gets the same way each time (a hash of its content), in [0, 1)."""
    digest = hashlib.sha256(genome.content_hash().encode()).digest()
    return {name: digest[i] / 256 for i, name in enumerate(TASKS)}


def test_a_proposal_depends_only_on_seed_generation_slot_and_the_archives(family) -> None:  # noqa: ANN001
    algorithm, _ = seeded(family)
    first = algorithm.ask(1, 0)
    assert algorithm.ask(1, 0).genome == first.genome  # asked again: the same child
    assert algorithm.ask(1, 1).genome != first.genome and algorithm.ask(2, 0).genome != first.genome
    assert first.active_task == active_task(1, algorithm.config.flip_interval, 3) == 0
    assert set(first.parents) <= {1, 2, 3} and len(first.omegas) == 2
    assert first.mutation["task"] == "os" and first.mutation["kind"] == algorithm.config.mutation.kind
    other_seed, _ = seeded(family, seed=4)
    assert other_seed.ask(1, 0).genome != first.genome


def test_tell_takes_the_cell_the_scores_map_to_and_keeps_only_strictly_better(family) -> None:  # noqa: ANN001
    algorithm, _ = seeded(family)
    os_archive = algorithm.archives[0]
    scores = {"os": 0.5, "db": 0.3, "coding": 0.2}
    told = algorithm.tell(
        [Offer(10, "a", scores), Offer(11, "b", {**scores, "os": 0.5}), Offer(12, "c", {**scores, "os": 0.55})]
    )
    cell = os_archive.cell_of((0.5, 0.3, 0.2))
    assert [r.status.name for r in told.reports[10]][0] == "NEW" and told.reports[11][0].status.name == "REJECTED"
    assert told.reports[12][0].status.name == "IMPROVED" and os_archive.elites[cell].candidate_id == 12
    # the cell taken twice in one tell is reported once, with its last taker
    assert [(t.candidate_id, t.quality) for t in told.taken if t.archive == 0 and t.cell == cell] == [(12, 0.55)]
    assert told.metrics[0]["elites"] == len(os_archive.elites) and told.metrics[0]["best"] == 0.6


def test_a_candidate_rejected_early_is_never_inserted(family) -> None:  # noqa: ANN001
    algorithm, _ = seeded(family)
    before = [dict(a.elites) for a in algorithm.archives]
    told = algorithm.tell([Offer(20, "x", None, bounds=[[0.0, 0.05], [0.0, 0.05], [0.0, 0.05]])])
    assert told.reports[20] == [] and told.taken == []
    assert [r["status"] for r in told.records[20]] == ["rejected_early"] * 3
    assert [dict(a.elites) for a in algorithm.archives] == before
    with pytest.raises(AssertionError, match="bounds"):
        algorithm.tell([Offer(21, "y", None)])


def test_thirty_generations_keep_every_elite_in_its_cell_and_no_archive_gets_worse(family) -> None:  # noqa: ANN001
    algorithm, genomes = seeded(family)
    best = [max(a.quality(e.scores) for e in a.elites.values()) for a in algorithm.archives]
    children = 0
    for generation in range(1, 31):
        proposals = [algorithm.ask(generation, slot) for slot in range(2)]  # both from the archives at its start
        offers = []
        for proposal in proposals:
            genomes[proposal.genome.content_hash()] = proposal.genome
            children += 1
            offers.append(Offer(100 + children, proposal.genome.content_hash(), made_up_scores(proposal.genome)))
        algorithm.tell(offers)
        now = [max(a.quality(e.scores) for e in a.elites.values()) for a in algorithm.archives]
        assert all(n >= b for n, b in zip(now, best, strict=True))
        best = now
        for archive in algorithm.archives:
            assert all(archive.cell_of(e.scores) == cell for cell, e in archive.elites.items())
    assert any(e.candidate_id > 100 for a in algorithm.archives for e in a.elites.values())
    final, parents = algorithm.final_merge()
    bests = [a.best(algorithm.experts[a.task_index], 3) for a in algorithm.archives]
    assert parents == [b.candidate_id for b in bests]
    qualities = [b.scores[k] for k, b in enumerate(bests)]
    assert qualities == best
    assert final == softmax_merge([genomes[b.genome_hash] for b in bests], qualities)


def test_a_random_merge_is_drawn_from_its_own_stream(family) -> None:  # noqa: ANN001
    algorithm, _ = seeded(family)
    merge = algorithm.ask_random_merge(0)
    assert merge.parents == () and len(merge.omegas) == 3 and abs(sum(merge.omegas) - 1) < 1e-9
    assert algorithm.ask_random_merge(0).genome == merge.genome != algorithm.ask_random_merge(1).genome
    assert merge.genome not in {algorithm.ask(g, s).genome for g in (1, 2) for s in (0, 1)}
