"""The CycleQD loop on tiny random Llama experts scored by a real, cheap skill measure (tests/evolution_probe.py):
archives and lineage in the store, the insertion rule, the final merge, and an exact resume after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import open_store
from cycleqd.evolver.archive import Elite, GridArchive, cell_key
from tests.evolution_probe import TASKS, make_tiny_family, run_probe_evolution, snapshot, stored_cells

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-family")
    make_tiny_family(root)
    return root


def replayed_cells(evo: EvolutionStore, in_commit_order: bool = False) -> dict[tuple[str, str], tuple[int, float]]:
    """The archives rebuilt from the candidates' recorded scores, applying the insertion rule generation by
    generation (asynchronous runs: in the order the generations were committed)."""
    archives = [GridArchive(a.task_index, TASKS, a.bins, tuple(map(tuple, a.bc_ranges))) for a in evo.archives()]
    committed = {g.number: (g.finished_at if in_commit_order else g.number, g.number) for g in evo.generations()}
    inserted = [c for c in evo.candidates() if c.kind in ("expert", "child")]
    ordered = sorted(inserted, key=lambda c: (committed[c.generation], c.slot))
    for candidate in ordered:
        elite = Elite(candidate.id, candidate.genome_hash or "", tuple(candidate.scores[n] for n in TASKS))
        for archive in archives:
            archive.offer(elite)
    return {(a.name, cell_key(cell)): (e.candidate_id, a.quality(e.scores)) for a in archives
            for cell, e in a.elites.items()}  # fmt: skip


def test_an_evolution_fills_archives_records_lineage_and_merges_the_best(family: Path, tmp_path: Path) -> None:
    db = tmp_path / "evolve.db"
    run_id, rows, evaluator = run_probe_evolution(db, family, None, (0.0,), generations=6, bins=4)
    evo = EvolutionStore(open_store(db), run_id)
    experts = evo.candidates("expert")
    assert [round(e.scores[name], 6) for e, name in zip(experts, TASKS, strict=True)] == [1.0, 1.0, 1.0]
    assert all(e.scores[n] < 1.0 for e in experts for n in TASKS if n != TASKS[e.slot])  # experts differ
    children = evo.candidates("child")
    assert [c.generation for c in children] == [1, 2, 3, 4, 5, 6]
    assert [c.active_task for c in children] == [0, 1, 2, 0, 1, 2]  # the active task cycles every generation
    known = {c.id for c in evo.candidates()}
    for child in children:
        assert len(set(child.parents)) == 2 and set(child.parents) <= known
        assert all(abs(w - 1.0) < 0.1 for w in child.omegas)
        assert child.mutation["kind"] == "svd" and child.mutation["task"] == TASKS[child.active_task]
        assert child.status == "inserted" and len(child.insertions) == 3
    assert [g.number for g in evo.generations()] == list(range(7))
    assert stored_cells(evo) == replayed_cells(evo)  # the store holds exactly what the insertion rule gives
    for metrics in evo.generations()[-1].metrics:
        cells = [c for c in evo.cells() if c.archive_id == next(a.id for a in evo.archives()
                                                                if a.task_name == metrics["archive"])]  # fmt: skip
        assert metrics["elites"] == len(cells) and metrics["coverage"] == len(cells) / 16
        assert metrics["best"] == pytest.approx(max(c.quality for c in cells))
    kinds = sorted(r.kind for r in rows)
    assert kinds == ["base", "expert", "expert", "expert", "final", "merge"]
    final = next(r for r in rows if r.kind == "final")
    assert set(final.test_scores) == set(TASKS)
    final_row = evo.candidate(final.candidate_id)
    assert final_row is not None and len(final_row.parents) == 3  # the best elite of each archive
    # every candidate was evaluated once for selection; the six of the final table once more on the test split
    assert len([e for e in evaluator.evaluated if not e[1]]) == 3 + 6
    assert len([e for e in evaluator.evaluated if e[1]]) == 6


def test_a_run_killed_mid_generation_resumes_to_the_same_archives(family: Path, tmp_path: Path) -> None:
    generations = 5
    whole_db, killed_db = tmp_path / "whole.db", tmp_path / "killed.db"
    whole_id, _, _ = run_probe_evolution(whole_db, family, None, (0.0, 0.0), generations=generations, bins=4)

    script = Path(__file__).with_name("evolution_probe.py")
    process = subprocess.Popen([sys.executable, str(script), str(killed_db), str(family), str(generations)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    run_id = None
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if not killed_db.exists():
                continue
            store = open_store(killed_db)
            runs = store.list_runs()
            if not runs:
                continue
            run_id = runs[0].id
            evo = EvolutionStore(store, run_id)
            committed = evo.committed_generations()
            # slot 0 of the next generation is scored, slot 1 (slower) is not: kill in the middle of it
            children = evo.candidates("child")
            measured = ("evaluated", "rejected_early")  # racing may have stopped it early: measured all the same
            half_done = [c for c in children if c.generation not in committed and c.status in measured]
            if len(committed) >= 3 and half_done:
                break
        else:
            pytest.fail(f"the evolution never reached the middle of generation 2: {process.stderr}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert run_id is not None and process.returncode == -signal.SIGKILL
    evo = EvolutionStore(open_store(killed_db), run_id)
    before = {c.id for c in evo.candidates("child") if c.status != "pending"}
    assert max(evo.committed_generations()) < generations

    _, _, evaluator = run_probe_evolution(killed_db, family, run_id, (0.0, 0.0), generations=generations, bins=4)
    assert not before & {cid for cid, test in evaluator.evaluated if not test}  # measured children are not redone
    assert snapshot(killed_db, run_id) == snapshot(whole_db, whole_id)
    assert [g.number for g in EvolutionStore(open_store(killed_db), run_id).generations()] == list(
        range(generations + 1)
    )


def test_the_asynchronous_mode_gives_each_child_its_own_generation(family: Path, tmp_path: Path) -> None:
    db = tmp_path / "async.db"
    run_id, rows, _ = run_probe_evolution(db, family, None, (0.05, 0.0), generations=5, bins=4, mode="async")
    evo = EvolutionStore(open_store(db), run_id)
    children = evo.candidates("child")
    assert sorted(c.generation for c in children) == [1, 2, 3, 4, 5] and {c.slot for c in children} == {0}
    assert [g.number for g in evo.generations()] == list(range(6))
    assert all(c.status == "inserted" for c in children)
    assert stored_cells(evo) == replayed_cells(evo, in_commit_order=True)
    assert {r.kind for r in rows} == {"base", "expert", "merge", "final"}


def test_the_search_baseline_plays_as_many_merges_as_children_in_full_and_its_best_is_tested(
    family: Path, tmp_path: Path
) -> None:
    from cycleqd.evolution.report import final_rows

    db = tmp_path / "search.db"
    again = {"expert os again": str(family / "expert-0")}
    settings = {"generations": 4, "bins": 4, "baselines": {"search": True, "models": again}}
    run_id, rows, evaluator = run_probe_evolution(db, family, None, (0.0,), **settings)
    evo = EvolutionStore(open_store(db), run_id)
    children, searched = evo.candidates("child"), evo.candidates("search")
    assert len(searched) == len(children) == 4
    for row in searched:
        assert row.status != "rejected_early" and row.scores == evaluator.full_scores[row.id]  # played in full
        assert len(row.omegas) == 3 and all(w > 0 for w in row.omegas) and sum(row.omegas) == pytest.approx(1.0)
        assert row.mutation["kind"] == "svd" and row.mutation["task"] in TASKS
    assert len({row.genome_hash for row in searched}) == 4
    mean = {row.id: sum(row.scores.values()) / 3 for row in searched}
    search_row = next(r for r in rows if r.kind == "search")
    assert mean[search_row.candidate_id] == max(mean.values()) and search_row.label == "random search (best of 4)"
    by_label = {r.label: r for r in rows}
    assert by_label["expert os again"].test_scores == by_label["expert os"].test_scores  # the same checkpoint
    assert [r.label for r in final_rows(evo, list(TASKS))] == [r.label for r in sorted(rows, key=lambda r: (
        ["base", "expert", "merge", "search", "baseline", "final"].index(r.kind), r.candidate_id))]  # fmt: skip

    before = len(evaluator.evaluated)
    _, again_rows, resumed = run_probe_evolution(db, family, run_id, (0.0,), **settings)
    assert resumed.evaluated == [] and before == 3 + 4 + 4 + 8  # selection: experts, children, search; 8 on test
    assert sorted((r.label, r.test_scores == by_label[r.label].test_scores) for r in again_rows) == sorted(
        (label, True) for label in by_label
    )
