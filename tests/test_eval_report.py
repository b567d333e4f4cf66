"""`cycleqd report RUN` for an eval run: a bar per environment at its score with its 95% interval, each task's pass or
fail, and the numbers in CSV beside the PNGs, all read from a real store."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from rich.console import Console

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.db.evolution_store import ArchiveSpec, CellUpdate, EvolutionStore
from cycleqd.results.eval_report import report_command
from cycleqd.results.stats import clopper_pearson, mean_ci

# (env, task, repeat) → score; None: an environment error
EPISODES = {
    ("os", "os-0", 0): 1.0, ("os", "os-1", 0): 1.0, ("os", "os-2", 0): 0.0, ("os", "os-3", 0): None,
    ("db", "db-0", 0): 0.0, ("db", "db-0", 1): 0.0, ("db", "db-1", 0): 0.5, ("db", "db-1", 1): 0.5,
    ("coding", "coding-0", 0): None,
}  # fmt: skip


def eval_run(db: Path) -> str:
    """An eval run's episodes as the orchestrator stores them: os pass/fail with an environment error, db with
    partial credit over two repeats, coding with nothing scored."""
    store = open_store(db)
    run = store.create_run("eval", {"tasks": ["os", "db", "coding"]})
    model = store.model_id("sha256:0123456789abcdef", "/models/smol")
    for (env, key, repeat), score in EPISODES.items():
        task = store.task_id(env, "builtin", "dev", key, f"hash-{key}")
        status = "env_error" if score is None else "completed"
        store.record_episode(EpisodeRecord(run.id, model, task, repeat, status, score))
    return run.id


def drawn_bars(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """What scores.png draws, read off the figure as it is saved: each bar's label, height and error bar's ends."""
    seen: dict[str, list] = {}
    save = Figure.savefig

    def saving(figure: Figure, path: object, *args: object, **kwargs: object) -> None:
        save(figure, path, *args, **kwargs)
        if Path(str(path)).name == "scores.png":
            axes = figure.axes[0]
            [bars] = [c for c in axes.containers if isinstance(c, BarContainer)]
            seen["labels"] = [t.get_text() for t in axes.get_xticklabels()]
            seen["heights"] = [bar.get_height() for bar in bars]
            segments = bars.errorbar.lines[2][0].get_segments()
            seen["ends"] = [end for s in segments for end in (float(s[0][1]), float(s[1][1]))]  # low, high, …

    monkeypatch.setattr(Figure, "savefig", saving)
    return seen


def test_an_eval_run_s_report_draws_each_environment_s_score_and_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runs.db"
    run_id = eval_run(db)
    seen = drawn_bars(monkeypatch)
    out = tmp_path / "report"
    terminal = Console(file=io.StringIO(), width=200)
    assert report_command(run_id[:6], db, out, terminal) == 0

    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.png", "tasks.csv", "tasks.png"]
    assert all((out / name).stat().st_size > 1000 for name in ("scores.png", "tasks.png"))
    os_ci, db_ci = clopper_pearson(2, 3), mean_ci([0.0, 0.5])  # os: 2 of 3 scored tasks; db: tasks' means
    # rows by (env, split) name: coding (nothing scored: no bar, no interval), db, os
    assert seen["labels"] == ["coding (dev)", "db (dev)", "os (dev)"]
    assert seen["heights"] == pytest.approx([0.0, 0.25, 2 / 3])
    assert seen["ends"] == pytest.approx([0.0, 0.0, db_ci.low, db_ci.high, os_ci.low, os_ci.high])

    scores = {row["env"]: row for row in csv.DictReader((out / "scores.csv").open())}
    assert scores["os"]["score"] != "" and float(scores["os"]["score"]) == pytest.approx(2 / 3)
    assert [float(scores["os"]["ci_low"]), float(scores["os"]["ci_high"])] == pytest.approx([os_ci.low, os_ci.high])
    assert (scores["os"]["method"], scores["os"]["tasks"], scores["os"]["episodes"], scores["os"]["errors"]) == (
        "clopper-pearson", "3", "4", "1")  # fmt: skip
    assert float(scores["db"]["score"]) == pytest.approx(0.25) and scores["db"]["method"] == "bootstrap"
    assert scores["coding"]["score"] == "" and scores["coding"]["ci_low"] == "" and scores["coding"]["errors"] == "1"

    tasks = {row["task"]: row for row in csv.DictReader((out / "tasks.csv").open())}
    assert {k: (v["score"], v["episodes"]) for k, v in tasks.items()} == {
        "os-0": ("1.0", "1"), "os-1": ("1.0", "1"), "os-2": ("0.0", "1"), "os-3": ("", "1"),
        "db-0": ("0.0", "2"), "db-1": ("0.5", "2"), "coding-0": ("", "1"),
    }  # fmt: skip
    assert tasks["os-3"]["statuses"] == "env_error"

    printed = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "0.667" in printed and f"[{os_ci.low:.3f}, {os_ci.high:.3f}] (3)" in printed
    assert f"wrote {out / 'scores.png'}" in printed


def test_the_task_grid_colours_each_task_by_its_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.db"
    run_id = eval_run(db)
    grids: list[list[list[float]]] = []
    titles: list[str] = []
    save = Figure.savefig

    def saving(figure: Figure, path: object, *args: object, **kwargs: object) -> None:
        save(figure, path, *args, **kwargs)
        if Path(str(path)).name == "tasks.png":
            for axes in figure.axes:
                grids.append(axes.images[0].get_array().filled(-1).tolist())
                titles.append(axes.get_title(loc="left"))

    monkeypatch.setattr(Figure, "savefig", saving)
    report_command(run_id, db, tmp_path / "report", Console(file=io.StringIO()))
    assert grids == [[[-1.0]], [[0.0, 0.5]], [[1.0, 1.0, 0.0, -1.0]]]  # -1: masked, no scored episode
    assert titles == ["coding (dev): 0 of 1 tasks passed, 1 with no score", "db (dev): 0 of 2 tasks passed",
                      "os (dev): 2 of 4 tasks passed, 1 with no score"]  # fmt: skip


def test_an_evolution_s_report_is_still_its_archives(tmp_path: Path) -> None:
    store = open_store(tmp_path / "evo.db")
    evo = EvolutionStore(store, store.create_run("evolve", {"tasks": [{"name": "os"}, {"name": "db"}]}).id)
    [archive] = evo.create_archives([ArchiveSpec(0, "os", 5, ["db"], [[0.0, 1.0]])])
    expert = evo.add_candidate("expert", 0, 0)
    evo.commit_generation(0, 0, {}, [CellUpdate(archive.id, "2", expert.id, 0.5)], [])
    out = tmp_path / "report"
    assert report_command(evo.run_id, tmp_path / "evo.db", out, Console(file=io.StringIO())) == 0
    assert (out / "archive-os.png").is_file() and not (out / "scores.png").exists()
