"""`cycleqd report RUN` for an eval run: its scores as figures and as tables beside them, read from the store.

- `scores.png`: a bar per (model, environment, split) at its mean over scored episodes (the one mean every view
  shows, `db.scores.ScoreTally`), with the 95% interval over tasks of `cycleqd.results.intervals` as its error bar;
- `tasks.png`: a row of cells per (model, environment, split), a cell per task coloured by its mean score (green
  pass, red fail, grey: no scored episode, only environment errors);
- `scores.csv` and `tasks.csv`: the numbers those figures draw, for a script or a spreadsheet.

An evolution's report (archive heatmaps, QD metrics) is `cycleqd.evolution.report`'s; `report_command` sends an
evolution there.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cycleqd.db.schema import Run, RunKind  # noqa: E402
from cycleqd.db.scores import ScoreTally  # noqa: E402
from cycleqd.db.store import Store  # noqa: E402
from cycleqd.results.intervals import aggregate_intervals  # noqa: E402
from cycleqd.results.lookup import find_run, model_label  # noqa: E402
from cycleqd.results.stats import Interval  # noqa: E402

TASK_LABELS_UP_TO = 60  # a row of more tasks than this is drawn without their ids: they would overlap


@dataclass(frozen=True)
class EnvRow:
    """One bar of `scores.png`: a model on one environment's split."""

    model: str
    env: str
    split: str
    score: float | None  # None: no episode was scored (only environment errors)
    episodes: int
    errors: int
    interval: Interval | None

    @property
    def label(self) -> str:
        return f"{self.env} ({self.split})"


@dataclass(frozen=True)
class TaskRow:
    """One cell of `tasks.png`: a task's mean over its scored repeats."""

    model: str
    env: str
    split: str
    task: str
    episodes: int
    score: float | None
    statuses: tuple[str, ...]


def eval_rows(store: Store, run_id: str) -> tuple[list[EnvRow], list[TaskRow]]:
    """The run's rows from its episodes, in the order the store gives (model, then env and split by name)."""
    labels = {m.id: model_label(m.reference, m.identity) for m in store.run_models([run_id])[run_id]}
    per_task: dict[tuple[int, str, str, str], list[tuple[float | None, str]]] = defaultdict(list)
    for model_id, env, split, key, score, status in store.task_scores(run_id):
        per_task[(model_id, env, split, key)].append((score, status))
    intervals = aggregate_intervals(store, run_id)
    groups: dict[tuple[int, str, str], list[float | None]] = defaultdict(list)
    tasks = []
    for (model_id, env, split, key), results in sorted(per_task.items()):
        scores = [score for score, _ in results]
        groups[(model_id, env, split)].extend(scores)
        tasks.append(TaskRow(labels.get(model_id, str(model_id)), env, split, key, len(results),
                             ScoreTally.of(scores).mean, tuple(sorted({s for _, s in results}))))  # fmt: skip
    envs = []
    for (model_id, env, split), scores in sorted(groups.items()):
        tally = ScoreTally.of(scores)
        envs.append(EnvRow(labels.get(model_id, str(model_id)), env, split, tally.mean, tally.episodes, tally.errors,
                           intervals.get((model_id, env, split))))  # fmt: skip
    return envs, tasks


def _bar_label(row: EnvRow, several_models: bool) -> str:
    return f"{row.model}\n{row.label}" if several_models else row.label


def write_score_bars(rows: list[EnvRow], out: Path) -> Path:
    """`scores.png`: a bar per row at its score, its 95% interval as the error bar (none where nothing was scored)."""
    several = len({r.model for r in rows}) > 1
    figure, axes = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 4.2))
    positions = np.arange(len(rows))
    heights = [r.score or 0.0 for r in rows]
    below = [r.score - r.interval.low if r.score is not None and r.interval else 0.0 for r in rows]
    above = [r.interval.high - r.score if r.score is not None and r.interval else 0.0 for r in rows]
    axes.bar(positions, heights, color="tab:blue", yerr=[below, above], capsize=6, ecolor="0.2")
    for x, row in zip(positions, rows, strict=True):
        text = "no score" if row.score is None else f"{row.score:.2f}"
        axes.text(x, 1.02, text, ha="center", va="bottom", fontsize=8)
    axes.set_xticks(positions, [_bar_label(r, several) for r in rows])
    axes.set_ylim(0.0, 1.1)
    axes.set_ylabel("mean score")
    methods = sorted({r.interval.method for r in rows if r.interval})
    axes.set_title(f"scores with 95% intervals over tasks ({', '.join(methods) or 'none'})", fontsize=10)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scores.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def write_task_grid(tasks: list[TaskRow], out: Path) -> Path:
    """`tasks.png`: per (model, env, split) a row of its tasks, each cell its mean score (grey: none scored)."""
    groups: dict[tuple[str, str, str], list[TaskRow]] = defaultdict(list)
    for task in tasks:
        groups[(task.model, task.env, task.split)].append(task)
    several = len({model for model, _, _ in groups}) > 1
    widest = max((len(g) for g in groups.values()), default=1)
    labelled = [g for g in groups.values() if len(g) <= TASK_LABELS_UP_TO]
    # room under each row for its task ids, written upright (about 0.07 inch a character at 6 points)
    label_inches = 0.07 * max((len(t.task) for g in labelled for t in g), default=0)
    figure, panels = plt.subplots(max(1, len(groups)), 1, squeeze=False, layout="constrained",
                                  figsize=(min(24.0, max(6.0, 0.25 * widest + 1)),
                                           (0.9 + label_inches) * max(1, len(groups))))  # fmt: skip
    colours = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.85")
    for axes, ((model, env, split), rows) in zip(panels[:, 0], groups.items(), strict=False):
        cells = np.array([[np.nan if r.score is None else r.score for r in rows]])
        axes.imshow(cells, cmap=colours, vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_yticks([])
        passed, unscored = sum(r.score == 1.0 for r in rows), sum(r.score is None for r in rows)
        title = f"{model + ': ' if several else ''}{env} ({split}): {passed} of {len(rows)} tasks passed"
        axes.set_title(title + (f", {unscored} with no score" if unscored else ""), fontsize=9, loc="left")
        if len(rows) <= TASK_LABELS_UP_TO:
            axes.set_xticks(range(len(rows)), [r.task for r in rows], rotation=90, fontsize=6)
        else:
            axes.set_xticks([])
    if not groups:
        panels[0, 0].set_axis_off()
        panels[0, 0].text(0.5, 0.5, "no episodes", ha="center", va="center")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tasks.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)  # every digit: a script compares what it reads


def write_score_table(rows: list[EnvRow], out: Path) -> Path:
    path = out / "scores.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "env", "split", "score", "ci_low", "ci_high", "tasks", "method", "episodes",
                         "errors"])  # fmt: skip
        for r in rows:
            i = r.interval
            writer.writerow([r.model, r.env, r.split, _number(r.score), _number(i and i.low), _number(i and i.high),
                             i.n if i else 0, i.method if i else "", r.episodes, r.errors])  # fmt: skip
    return path


def write_task_table(tasks: list[TaskRow], out: Path) -> Path:
    path = out / "tasks.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "env", "split", "task", "episodes", "score", "statuses"])
        for t in tasks:
            writer.writerow([t.model, t.env, t.split, t.task, t.episodes, _number(t.score), " ".join(t.statuses)])
    return path


def write_eval_report(store: Store, run: Run, out: Path) -> tuple[list[EnvRow], list[Path]]:
    """Every file of an eval run's report under `out`; the rows drawn, and the files in the order written."""
    rows, tasks = eval_rows(store, run.id)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_score_bars(rows, out), write_task_grid(tasks, out), write_score_table(rows, out),
             write_task_table(tasks, out)]  # fmt: skip
    return rows, files


def score_table(rows: list[EnvRow]) -> Table:
    table = Table("model", "env", "split", "score", "95% interval (tasks)", "episodes", "errors",
                  title="scores (95% intervals over tasks)")  # fmt: skip
    for r in rows:
        span = f"[{r.interval.low:.3f}, {r.interval.high:.3f}] ({r.interval.n})" if r.interval else "–"
        score = "–" if r.score is None else f"{r.score:.3f}"
        table.add_row(r.model, r.env, r.split, score, span, str(r.episodes), str(r.errors))
    return table


def report_command(run_text: str, db: Path, out: Path | None, console: Console) -> int:
    """`cycleqd report RUN`: an evolution's report (`cycleqd.display.show_report`), or an eval run's: its table,
    then its figures and tables under `out` (default: report-RUN)."""
    from cycleqd.db.monitor_store import open_monitor_store
    from cycleqd.display import print_table, show_report

    store = open_monitor_store(db)
    run = find_run(store, run_text, db)
    if run.kind is RunKind.EVOLVE:
        show_report(run.id, db, out)
        return 0
    rows, files = write_eval_report(store, run, out or Path(f"report-{run.id}"))
    print_table(score_table(rows), console)
    for path in files:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return 0
