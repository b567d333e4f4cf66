"""The final table's intervals and paired differences, read from a real SQLite store filled with episodes."""

from pathlib import Path

import pytest

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import EpisodeRecord, open_store
from cycleqd.evolution.report import final_rows
from cycleqd.results.intervals import final_intervals, final_intervals_json, final_report_tables, held_out_specs

TASKS = [{"name": "os", "env": "os", "test_split": "test"}, {"name": "db", "env": "db", "test_split": "test"}]
N = 30  # tasks per environment


def fill(tmp_path: Path) -> tuple:
    store = open_store(tmp_path / "s.db")
    run = store.create_run("evolve", {"tasks": TASKS})
    evo = EvolutionStore(store, run.id)
    # per-task scores: the final model solves what both experts solve; the merge only what the db expert does
    solved = {
        "base": lambda env, i: 0.0,
        "expert-os": lambda env, i: float(env == "os" and i % 2 == 0),
        "expert-db": lambda env, i: float(env == "db" and i % 3 == 0),
        "merge": lambda env, i: float(env == "db" and i % 3 == 0),
        "final": lambda env, i: float((env == "os" and i % 2 == 0) or (env == "db" and i % 3 == 0)),
    }
    kinds = {"base": ("base", 0), "expert-os": ("expert", 0), "expert-db": ("expert", 1), "merge": ("merge", 0),
             "final": ("final", 0)}  # fmt: skip
    for name, score in solved.items():
        kind, slot = kinds[name]
        model = store.model_id(name, name)
        test_scores = {}
        for env in ("os", "db"):
            values = []
            for i in range(N):
                task = store.task_id(env, "builtin", "test", f"{env}#{i}", f"h{env}{i}")
                values.append(score(env, i))
                store.record_episode(EpisodeRecord(run.id, model, task, 0, "completed", values[-1]))
            # an environment error is not a score: it must not enter any interval
            task = store.task_id(env, "builtin", "test", f"{env}#err", "herr")
            store.record_episode(EpisodeRecord(run.id, model, task, 0, "error", None))
            test_scores[env] = sum(values) / N
        candidate = evo.add_candidate(kind, 0, slot)
        evo.record_scores(candidate.id, model, test_scores, test=True)
    return store, run, evo


def test_final_intervals_cells_and_paired_differences(tmp_path: Path) -> None:
    store, run, evo = fill(tmp_path)
    rows = final_rows(evo, ["os", "db"])
    model_of = {c.id: c.model_id for c in evo.candidates()}
    result = final_intervals(store, run.id, rows, held_out_specs(TASKS), model_of)
    by_label = {row.label: row for row in rows}
    os_expert = result.cells[(by_label["expert os"].candidate_id, "os")]
    assert os_expert.n == N and os_expert.estimate == pytest.approx(0.5)
    assert 0.3 < os_expert.low < 0.5 < os_expert.high < 0.7
    assert os_expert.method == "clopper-pearson"  # pass/fail scores: the exact interval, not a bootstrap
    base = result.cells[(by_label["base"].candidate_id, "os")]
    assert base.estimate == 0 and base.high == pytest.approx(0.1157, abs=1e-3)  # 0 of 30 is not [0, 0]
    assert result.averages[by_label["base"].candidate_id].method == "mover(clopper-pearson)"
    final_avg = result.averages[by_label["CycleQD final"].candidate_id]
    assert final_avg.estimate == pytest.approx((0.5 + 10 / 30) / 2) and final_avg.n == 2 * N
    diffs = dict(result.differences)
    merge = diffs["final − naive merge (average)"]
    assert merge.estimate == pytest.approx(0.25) and merge.low > 0  # the os skill the merge lost
    best = next(v for k, v in diffs.items() if k.startswith("final − best expert"))
    assert best.estimate == pytest.approx(10 / 30 / 2) and best.low > 0
    assert diffs["expert os − base on os"].estimate == pytest.approx(0.5)
    assert diffs["expert db − base on db"].estimate == pytest.approx(1 / 3)
    assert diffs["expert db − base on db"].n == N  # paired on the 30 scored tasks, the error left out
    assert merge.method == "mover(newcombe-paired)" and diffs["expert os − base on os"].method == "newcombe-paired"
    rendered = final_report_tables(store, run.id, rows, TASKS)
    assert len(rendered) == 2 and rendered[1].row_count == 4
    payload = final_intervals_json(result, rows)
    assert payload["rows"]["expert os"]["os"]["estimate"] == pytest.approx(0.5)  # type: ignore[index]
    assert len(payload["differences"]) == 4  # type: ignore[arg-type]


def test_the_final_model_is_compared_with_each_baseline_paired_over_tasks(tmp_path: Path) -> None:
    store, run, evo = fill(tmp_path)
    # a search baseline that solves the os half the final model does, and a labelled checkpoint solving nothing
    for kind, label, solves in (("search", None, lambda env, i: env == "os" and i % 4 == 0),
                                ("baseline", "all-data SFT", lambda env, i: False)):  # fmt: skip
        model = store.model_id(kind, kind)
        for env in ("os", "db"):
            for i in range(N):
                task = store.task_id(env, "builtin", "test", f"{env}#{i}", f"h{env}{i}")
                store.record_episode(EpisodeRecord(run.id, model, task, 0, "completed", float(solves(env, i))))
        candidate = evo.add_candidate(kind, 1, 0, mutation={"label": label} if label else {})
        evo.record_scores(candidate.id, model, {"os": 0.0, "db": 0.0}, test=True)
    rows = final_rows(evo, ["os", "db"])
    assert [row.label for row in rows][-3:] == ["random search (best of 1)", "all-data SFT", "CycleQD final"]
    model_of = {c.id: c.model_id for c in evo.candidates()}
    diffs = dict(final_intervals(store, run.id, rows, held_out_specs(TASKS), model_of).differences)
    search = diffs["final − random search (best of 1) (average)"]
    assert search.estimate == pytest.approx((0.5 - 8 / 30 + 10 / 30) / 2) and search.n == 2 * N
    assert diffs["final − all-data SFT (average)"].estimate == pytest.approx((0.5 + 10 / 30) / 2)


def test_the_verdict_over_seeds_lists_each_runs_interval_and_the_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from cycleqd.demo.seeds import FINAL_AVERAGE, seed_spread_table, seed_verdicts

    store, first, _ = fill(tmp_path)
    _, second, _ = fill(tmp_path)  # the same scores again in a second run of the same store
    runs = [(run.id, SimpleNamespace(task_names=("os", "db"), tasks=TASKS, seed=seed))
            for seed, run in enumerate((first, second))]  # fmt: skip
    verdicts = seed_verdicts(store, runs)  # type: ignore[arg-type]
    merge = verdicts["final − naive merge (average)"]
    assert len(merge) == 2 and merge[0] == merge[1] and merge[0].mean == pytest.approx(0.25) and merge[0].low > 0
    assert verdicts[FINAL_AVERAGE][0].mean == pytest.approx((0.5 + 10 / 30) / 2)
    best = verdicts["final − best expert (average)"]  # one row whichever expert was best, the cell names it
    assert best[1].which == "expert os" and best[1].describe().endswith("(expert os)")
    table = seed_spread_table(store, runs)  # type: ignore[arg-type]
    spread = list(table.columns[-2].cells)
    above = list(table.columns[-1].cells)
    assert all(cell == "0.000" for cell in spread) and above[1] == "2 of 2"
    # a comparison only the second run could make stays in the second run's column
    from cycleqd.demo import seeds

    only_second = {label: {1: by_run[1]} for label, by_run in verdicts.items()}
    monkeypatch.setattr(seeds, "seed_verdicts", lambda *_: only_second)
    shifted = seeds.seed_spread_table(store, runs)  # type: ignore[arg-type]
    assert list(shifted.columns[1].cells)[1] == "" and list(shifted.columns[2].cells)[1].startswith("+0.250")


def test_show_prints_each_scores_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from rich.console import Console

    from cycleqd.db.schema import Aggregate
    from cycleqd.results.commands import show_run

    db = tmp_path / "e.db"
    store = open_store(db)
    run = store.create_run("eval", {"model": "m", "tasks": ["db"]})
    model = store.model_id("m", "m")
    for i in range(20):
        task = store.task_id("db", "builtin", "dev", f"db#{i}", f"h{i}")
        store.record_episode(EpisodeRecord(run.id, model, task, 0, "completed", float(i < 5)))
    store.save_aggregate(Aggregate(run_id=run.id, model_id=model, env="db", split="dev", episodes=20, score=0.25))
    assert show_run(db, run.id, True, False, Console()) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["ci95"]["n"] == 20 and result["ci95"]["estimate"] == pytest.approx(0.25)
    assert 0.0 <= result["ci95"]["low"] < 0.25 < result["ci95"]["high"] <= 0.5
    wide = Console(width=200, record=True)
    show_run(db, run.id, False, False, wide)
    low, high = result["ci95"]["low"], result["ci95"]["high"]
    assert f"[{low:.3f}, {high:.3f}] (20)" in wide.export_text()
