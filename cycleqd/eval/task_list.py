"""`cycleqd tasks`: the task ids `eval --task-ids` accepts, each with a one-line description."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from cycleqd.envs.registry import environment
from cycleqd.eval.tasks import EvalTask, load_eval_tasks, suite_environments

WIDTH = 100


def one_line(task: EvalTask) -> str:
    """The task's own words as its environment describes it, on one line."""
    text = " ".join(environment(task.env).describe(task.task).split())
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def tasks_command(envs: Sequence[str], suite: str, split: str, as_json: bool, console: Console) -> int:
    """`envs` empty: the suite's (`suite_environments`)."""
    tasks = load_eval_tasks(list(envs or suite_environments(suite, split, "--env")), suite, split, None)
    if as_json:
        rows = [{"id": t.key, "env": t.env, "suite": t.suite, "split": t.split, "description": one_line(t)}
                for t in tasks]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    table = Table("id", "env", "split", "description", title=f"{len(tasks)} task(s) in suite {suite}")
    for task in tasks:
        table.add_row(task.key, task.env, task.split, one_line(task))
    console.print(table)
    return 0
