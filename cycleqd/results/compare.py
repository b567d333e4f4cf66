"""`cycleqd compare RUN RUN…`: models side by side — per environment (mean, 95% bootstrap interval over tasks),
per task, and the tasks on which they differ. A run holding several models (an evolution) gives one column each."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cycleqd.db.store import Store
from cycleqd.results.lookup import find_run, model_label, open_existing_store
from cycleqd.results.stats import mean_ci

TaskKey = tuple[str, str, str]  # env, split, task key


@dataclass(frozen=True)
class Column:
    run: str
    model_id: int
    model: str
    identity: str
    label: str


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
        }  # fmt: skip


def build_comparison(store: Store, run_texts: list[str], db_path: Path) -> Comparison:
    runs = [find_run(store, text, db_path) for text in run_texts]
    models = store.run_models([r.id for r in runs])
    comparison = Comparison([], [], [])
    for run in runs:
        index_of = {}
        for model in models[run.id]:
            index_of[model.id] = len(comparison.columns)
            label = f"{run.id[:8]} {model_label(model.reference, model.identity)}"
            comparison.columns.append(Column(run.id, model.id, model.reference, model.identity, label))
            comparison.scores.append(defaultdict(list))
            comparison.errors.append(defaultdict(int))
        for model_id, env, split, task_key, score, _status in store.task_scores(run.id):
            index = index_of[model_id]
            if score is None:
                comparison.errors[index][(env, split, task_key)] += 1
            else:
                comparison.scores[index][(env, split, task_key)].append(score)
    return comparison


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def print_comparison(comparison: Comparison, console: Console, all_tasks: bool) -> None:
    n = len(comparison.columns)
    table = Table("env", "split", *(c.label for c in comparison.columns), title="mean score [95% CI over tasks]")
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
    console.print(table)
    differing = comparison.differing()
    keys = comparison.tasks() if all_tasks else differing
    title = "per task" if all_tasks else f"tasks where they differ ({len(differing)} of {len(comparison.tasks())})"
    tasks = Table("env", "task", *(c.label for c in comparison.columns), title=title)
    for key in keys:
        tasks.add_row(key[0], f"{key[2]} ({key[1]})", *(_cell(comparison.task_mean(i, key)) for i in range(n)))
    console.print(tasks)


def compare_command(run_texts: list[str], db_path: Path, as_json: bool, all_tasks: bool, console: Console) -> int:
    comparison = build_comparison(open_existing_store(db_path), run_texts, db_path)
    if as_json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print_comparison(comparison, console, all_tasks)
    return 0
