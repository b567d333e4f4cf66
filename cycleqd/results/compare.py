"""`cycleqd compare RUN RUN…`: models side by side — per environment the mean with its 95% interval over tasks,
the paired difference of each column against the first over the tasks both scored (with the interval `report`
gives its differences: `cycleqd.results.stats.paired_ci`), per task, and the tasks on which they differ. A run
holding several models (an evolution) gives one column each. A RUN is read from --db, or from another store as
STORE:RUN. Columns that share no scored task are refused: their means, side by side, would compare nothing."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cycleqd.db.store import Store
from cycleqd.display import print_table
from cycleqd.errors import UserError
from cycleqd.results.lookup import find_run, model_label, open_existing_store
from cycleqd.results.stats import Interval, mean_ci, paired_ci

TaskKey = tuple[str, str, str]  # env, split, task key


class NothingToCompareError(UserError):
    """The runs given scored no task in common."""


@dataclass(frozen=True)
class Column:
    run: str
    model_id: int
    model: str
    identity: str
    label: str
    db: str  # the store it was read from


@dataclass
class Comparison:
    columns: list[Column]
    # per column: task → the scores of its scored episodes (several with repeats), and its episode/error counts
    scores: list[dict[TaskKey, list[float]]]
    errors: list[dict[TaskKey, int]]

    def groups(self) -> list[tuple[str, str]]:
        return sorted({(env, split) for column in self.scores for env, split, _ in column})

    def tasks(self) -> list[TaskKey]:
        return sorted({key for column in self.scores for key in column} | {k for c in self.errors for k in c})

    def task_mean(self, index: int, key: TaskKey) -> float | None:
        values = self.scores[index].get(key)
        return sum(values) / len(values) if values else None

    def task_means(self, index: int, env: str, split: str) -> dict[str, float]:
        return {k: sum(v) / len(v) for (e, s, k), v in self.scores[index].items() if (e, s) == (env, split) and v}

    def shared(self) -> set[TaskKey]:
        """Tasks scored in every column."""
        return set.intersection(*(set(column) for column in self.scores)) if self.scores else set()

    def paired(self, index: int, env: str, split: str) -> Interval | None:
        """Column `index` − the first column on (env, split), paired over the tasks both scored; None when they
        scored none in common."""
        a, b = self.task_means(index, env, split), self.task_means(0, env, split)
        return paired_ci([a], [b]) if a.keys() & b.keys() else None

    def differences(self) -> list[tuple[str, str, int, Interval]]:
        """(env, split, column, its paired difference against the first column), where they share a task."""
        found = []
        for env, split in self.groups():
            for index in range(1, len(self.columns)):
                if (interval := self.paired(index, env, split)) is not None:
                    found.append((env, split, index, interval))
        return found

    def differing(self) -> list[TaskKey]:
        """Tasks every column ran and scored, on which their mean scores are not all equal."""
        found = []
        for key in self.tasks():
            means = [self.task_mean(i, key) for i in range(len(self.columns))]
            if None not in means and len(set(means)) > 1:
                found.append(key)
        return found

    def env_summary(self, index: int, env: str, split: str) -> dict[str, Any]:
        per_task = [v for (e, s, _), v in self.scores[index].items() if (e, s) == (env, split)]
        errors = sum(n for (e, s, _), n in self.errors[index].items() if (e, s) == (env, split))
        # The score is the mean over episodes (what the store's aggregates hold); its interval resamples tasks.
        episodes = [score for values in per_task for score in values]
        interval = mean_ci([sum(v) / len(v) for v in per_task]) if per_task else None
        return {
            "score": sum(episodes) / len(episodes) if episodes else None,
            "ci95": None if interval is None else [interval.low, interval.high],
            "tasks": len(per_task), "episodes": sum(len(v) for v in per_task) + errors, "errors": errors,
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        n = len(self.columns)
        return {
            "columns": [asdict(c) for c in self.columns],
            "envs": [{"env": env, "split": split, "columns": [self.env_summary(i, env, split) for i in range(n)]}
                     for env, split in self.groups()],
            "tasks": [{"env": k[0], "split": k[1], "task": k[2], "scores": [self.task_mean(i, k) for i in range(n)]}
                      for k in self.tasks()],
            "differ": [{"env": k[0], "split": k[1], "task": k[2]} for k in self.differing()],
            "differences": [{"env": env, "split": split, "column": i, "against": 0,
                             "compared": f"{self.columns[i].label} − {self.columns[0].label}", **interval.to_json()}
                            for env, split, i, interval in self.differences()],
            "shared_tasks": len(self.shared()), "scored_tasks": len({k for c in self.scores for k in c}),
        }  # fmt: skip


def store_and_run(text: str, db_path: Path) -> tuple[Path, str]:
    """A RUN argument: `RUN` (an id or unique prefix in --db's store) or `STORE:RUN` (in that store file)."""
    store, colon, run = text.rpartition(":")
    if colon and not run:
        raise UserError(f"{text}: expected RUN or STORE:RUN (e.g. {store}:3f2a), a run id after the colon")
    if store and Path(store).expanduser().is_dir():
        raise UserError(
            f"{text}: {store} is a folder; a store is one SQLite file, e.g. {Path(store) / 'cycleqd.db'}:{run}"
        )
    return (Path(store).expanduser(), run) if store else (db_path, run)


def build_comparison(run_texts: list[str], db_path: Path) -> Comparison:
    places = [store_and_run(text, db_path) for text in run_texts]
    stores: dict[Path, Store] = {}
    for path, _ in places:  # every store and run found before anything is read
        stores.setdefault(path, open_existing_store(path))
    runs = [(path, find_run(stores[path], text, path)) for path, text in places]
    several = len(stores) > 1  # then a column names its store: the same run id may sit in two copies of a store
    comparison = Comparison([], [], [])
    for path, run in runs:
        store = stores[path]
        index_of = {}
        for model in store.run_models([run.id])[run.id]:
            index_of[model.id] = len(comparison.columns)
            label = f"{f'{path.name}:' if several else ''}{run.id[:8]} {model_label(model.reference, model.identity)}"
            comparison.columns.append(Column(run.id, model.id, model.reference, model.identity, label, str(path)))
            comparison.scores.append(defaultdict(list))
            comparison.errors.append(defaultdict(int))
        for model_id, env, split, task_key, score, _status in store.task_scores(run.id):
            index = index_of[model_id]
            if score is None:
                comparison.errors[index][(env, split, task_key)] += 1
            else:
                comparison.scores[index][(env, split, task_key)].append(score)
    return comparison


def check_comparable(comparison: Comparison) -> str | None:
    """Refuses columns that share no scored task (a UserError naming what each holds); a warning line when they
    share only some, since each mean is then over tasks of its own."""
    if len(comparison.columns) < 2:
        return None
    in_two = [k for k, n in Counter(k for column in comparison.scores for k in column).items() if n > 1]
    if not in_two:
        held = "; ".join(f"{c.label}: {_groups_text(comparison.scores[i])}" for i, c in enumerate(comparison.columns))
        raise NothingToCompareError(f"nothing to compare: no task was scored in more than one column ({held})")
    shared, scored = len(comparison.shared()), len({k for column in comparison.scores for k in column})
    if shared < scored:
        return (f"warning: the columns share {shared} of the {scored} scored tasks; each mean is over its own tasks, "
                "each paired difference over the tasks its two columns share")  # fmt: skip
    return None


def _groups_text(scores: dict[TaskKey, list[float]]) -> str:
    counts = Counter((env, split) for env, split, _ in scores)
    return ", ".join(f"{env}/{split} {n} task(s)" for (env, split), n in sorted(counts.items())) or "nothing scored"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def print_comparison(comparison: Comparison, console: Console, all_tasks: bool) -> None:
    n = len(comparison.columns)
    table = Table("env", "split", *(c.label for c in comparison.columns), title="mean score [95% interval over tasks]")
    for env, split in comparison.groups():
        cells = []
        for i in range(n):
            summary = comparison.env_summary(i, env, split)
            if summary["score"] is None:
                cells.append("–")
                continue
            low, high = summary["ci95"]
            cells.append(f"{summary['score']:.3f} [{low:.2f}, {high:.2f}] n={summary['tasks']}")
        table.add_row(env, split, *cells)
    print_table(table, console)
    differences = comparison.differences()
    if differences:
        paired = Table("env", "split", "paired difference", "mean [95% interval]", "tasks", "method",
                       title="paired over the tasks both columns scored")  # fmt: skip
        for env, split, i, interval in differences:
            compared = f"{comparison.columns[i].label} − {comparison.columns[0].label}"
            paired.add_row(env, split, compared, interval.describe(signed=True), str(interval.n), interval.method)
        print_table(paired, console)
    differing = comparison.differing()
    keys = comparison.tasks() if all_tasks else differing
    title = "per task" if all_tasks else f"tasks where they differ ({len(differing)} of {len(comparison.tasks())})"
    tasks = Table("env", "task", *(c.label for c in comparison.columns), title=title)
    for key in keys:
        tasks.add_row(key[0], f"{key[2]} ({key[1]})", *(_cell(comparison.task_mean(i, key)) for i in range(n)))
    print_table(tasks, console)


def compare_command(
    run_texts: list[str], db_path: Path, as_json: bool, all_tasks: bool, console: Console, err: Console
) -> int:
    comparison = build_comparison(run_texts, db_path)
    warning = check_comparable(comparison)
    if warning:
        err.print(warning, highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print_comparison(comparison, console, all_tasks)
    return 0
