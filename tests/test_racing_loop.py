"""Racing in the evolution loop (tests/evolution_probe.py: every probe position is one 0/1 episode): the same
synchronous run with and without racing gives the same archives, cells, QD metrics, lineage and final model, for
fewer episodes; every child rejected early is one the run without racing rejected with all its episodes; a child
whose genome was measured before is not measured again."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import open_store
from cycleqd.evolution.loop import CandidateUnderTest, Evolution
from cycleqd.evolution.report import final_rows, saving_line, write_episode_table
from cycleqd.evolver.svd_cache import build_svd_cache
from cycleqd.monitor.queries.evolution_run import EpisodeSaving, evolution_progress
from tests.evolution_probe import TASKS, ProbeEvaluator, make_tiny_family, probe_config, run_probe_evolution

pytestmark = pytest.mark.slow
SETTINGS = {"generations": 8, "bins": 2, "mode": "sync"}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-family")
    make_tiny_family(root)
    return root


def what_racing_must_not_change(evo: EvolutionStore) -> dict:
    hashes = {c.id: c.genome_hash for c in evo.candidates()}
    names = {a.id: a.task_name for a in evo.archives()}
    children = evo.candidates("child")
    return {
        "archives": [(a.task_name, a.bins, a.bc_tasks, a.bc_ranges) for a in evo.archives()],
        "cells": sorted(
            (names[c.archive_id], c.cell, hashes[c.candidate_id], c.quality, c.generation) for c in evo.cells()
        ),  # fmt: skip
        "metrics": [(g.number, g.active_task, g.metrics) for g in evo.generations()],
        "lineage": [
            (c.generation, c.slot, c.genome_hash, [hashes[p] for p in c.parents], c.omegas, c.mutation)
            for c in children
        ],  # fmt: skip
        "final": [
            (c.kind, c.genome_hash, [hashes[p] for p in c.parents], c.test_scores)
            for c in evo.candidates()
            if c.kind in ("base", "merge", "final")
        ],  # fmt: skip
    }


def test_racing_changes_nothing_but_the_episodes_spent(family: Path, tmp_path: Path) -> None:
    runs = {}
    for kind in ("off", "exact"):
        db = tmp_path / f"{kind}.db"
        run_id, _, evaluator = run_probe_evolution(db, family, None, (0.0, 0.0), racing={"kind": kind}, **SETTINGS)
        runs[kind] = (EvolutionStore(open_store(db), run_id), evaluator)
    (plain, plain_eval), (raced, raced_eval) = runs["off"], runs["exact"]
    assert what_racing_must_not_change(raced) == what_racing_must_not_change(plain)
    assert len(plain.cells()) > 3  # children did enter cells: the comparison covers insertions
    assert final_rows(raced, list(TASKS)) == final_rows(plain, list(TASKS))  # the report's table

    early = [c for c in raced.candidates("child") if c.status == "rejected_early"]
    assert early, "no child was rejected early: the test would not show racing at work"
    assert raced_eval.episodes < plain_eval.episodes
    assert raced_eval.episodes == sum(c.episodes_played for c in raced.candidates("child")) + 3 * 72 * 3
    assert all(c.episodes_planned == 3 * 72 for c in raced.candidates("child"))
    assert all(c.episodes_played == c.episodes_planned for c in plain.candidates("child"))

    plain_children = {(c.generation, c.slot): c for c in plain.candidates("child")}
    for child in early:
        assert child.scores == {} and child.episodes_played < child.episodes_planned
        assert {r["status"] for r in child.insertions} == {"rejected_early"} and len(child.insertions) == 3
        # the same child, all its episodes played, was offered and refused by every archive
        twin = plain_children[(child.generation, child.slot)]
        assert twin.genome_hash == child.genome_hash
        assert [r["status"] for r in twin.insertions] == ["rejected"] * 3
        full = raced_eval.full_scores[child.id]
        assert full == twin.scores
        for (lo, hi), name in zip(child.bounds, TASKS, strict=True):
            assert lo < full[name] < hi

    # what the report and the monitor say about the saving
    played = sum(c.episodes_played for c in raced.candidates("child"))
    saving = evolution_progress(raced.store, raced.run_id).episodes
    assert saving == EpisodeSaving(played, 16 * 3 * 72, 16, len(early))
    line = saving_line(raced)
    assert line is not None and f"played {played:,} of {16 * 3 * 72:,}" in line and f"{len(early)} of 16" in line
    rows = list(csv.DictReader(write_episode_table(raced, tmp_path / "report").open()))
    assert sum(r["outcome"] == "rejected early" for r in rows) == len(early)
    assert sum(int(r["episodes_played"]) for r in rows) == played
    # without racing the same children were offered to every archive and refused: the table says so, as the live
    # view does, and names the archives that took the others
    outcomes = {int(r["candidate"]): r["outcome"] for r in csv.DictReader(write_episode_table(plain, tmp_path).open())}
    refused = {plain_children[(c.generation, c.slot)].id for c in early}
    assert {outcomes[i] for i in refused} == {"rejected everywhere"}
    placed = [c for c in plain.candidates("child") if any(r["status"] in ("new", "improved") for r in c.insertions)]
    assert placed and all(outcomes[c.id].split(", ")[0].split()[0] in TASKS for c in placed)
    assert all(outcomes[c.id].endswith(("new", "improved")) for c in placed)


def test_a_genome_measured_before_is_not_measured_again(family: Path, tmp_path: Path) -> None:
    db = tmp_path / "dedupe.db"
    run_id, _, _ = run_probe_evolution(db, family, None, (0.0,), generations=4, bins=2)
    store = open_store(db)
    evo = EvolutionStore(store, run_id)
    base, experts = family / "base", [family / f"expert-{k}" for k in range(3)]
    config = probe_config(base, experts, generations=4, bins=2)
    cache = build_svd_cache(base, experts, family / "cache", progress=False)
    evaluator = ProbeEvaluator(cache, experts, family / "work")
    evolution = Evolution(config, evo, cache, family / "genomes", evaluator)
    evolution._restore_archives()
    evolution._free_slots.put_nowait(0)
    for earlier in evo.candidates("child"):
        again = evo.add_candidate("child", 100 + earlier.generation, 0, genome_hash=earlier.genome_hash,
                                  active_task=earlier.active_task)  # fmt: skip
        under = CandidateUnderTest(again.id, "child", None, again.genome_hash)
        measured = asyncio.run(evolution._measure(again, under))
        stored = evo.candidate(again.id)
        assert stored is not None and stored.episodes_played == 0
        if earlier.status == "rejected_early":
            assert measured.rejected_early and stored.status == "rejected_early" and stored.bounds == earlier.bounds
        else:
            assert measured.scores == earlier.scores and stored.scores == earlier.scores
    assert evaluator.evaluated == []  # nothing was scored again
