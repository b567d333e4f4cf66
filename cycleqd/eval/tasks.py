"""Which tasks an evaluation runs: the built-in suites or a user's files, per environment and split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from cycleqd.envs.registry import Task, environment, names
from cycleqd.envs.suites import BUILTIN, suite_environment, suite_tasks
from cycleqd.errors import UserError


class UnknownTaskError(UserError):
    """`--task-ids` names a task the selected suites do not hold."""


class UnrecognizedSuiteError(UserError):
    """No environment recognizes a suite's tasks, and none was named."""


def suite_environments(suite: str, split: str, option: str) -> tuple[str, ...]:
    """The environments to run when `option` (`--tasks`, `--env`) names none: all of them in the built-in suites; in
    a file or folder, the one that recognizes its tasks (as `suite verify --env auto` reads it)."""
    if suite == BUILTIN:
        return names()
    found = suite_environment(suite, split)
    if found is None:
        raise UnrecognizedSuiteError(f"no environment recognizes the tasks in {suite}: name theirs with {option} "
                                     f"(one of {', '.join(names())})")  # fmt: skip
    return (found,)


@dataclass(frozen=True)
class EvalTask:
    env: str
    suite: str
    split: str
    key: str  # the task's id within its suite
    task: Task  # the environment's own task value: handed back to `environment(env)` for anything beyond its id

    @property
    def content_hash(self) -> str:
        content = asdict(self.task)
        for gold_only in (f.name for f in fields(self.task) if f.metadata.get("gold_only")):
            del content[gold_only]
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_eval_tasks(envs: list[str], suite: str, split: str, limit: int | None) -> list[EvalTask]:
    """Tasks of every env (at most `limit` each), in a stable order."""
    for env in envs:
        environment(env)  # an unknown name fails before any file is read
    tasks: list[EvalTask] = []
    for env in envs:
        found = [EvalTask(env, suite, split, task.task_id, task) for task in suite_tasks(env, suite, split)]
        tasks.extend(found[:limit] if limit else found)
    return tasks


def select_tasks(tasks: list[EvalTask], task_ids: Sequence[str] | None) -> list[EvalTask]:
    """Only the tasks named (by `EvalTask.key`, as `cycleqd tasks` prints it), in the order given."""
    if not task_ids:
        return tasks
    by_key = {task.key: task for task in tasks}
    unknown = [key for key in task_ids if key not in by_key]
    if unknown:
        raise UnknownTaskError(
            f"--task-ids: no task {', '.join(map(repr, unknown))} among the {len(tasks)} selected by --tasks, --suite "
            "and --split (list them with: cycleqd tasks)"
        )
    return [by_key[key] for key in dict.fromkeys(task_ids)]


def planned_tasks(
    envs: Sequence[str], suite: str, split: str, task_ids: Sequence[str] | None, limit: int | None
) -> list[EvalTask]:
    """The tasks an evaluation plays: those `--task-ids` names (all when unset), then at most `--limit` per
    environment, so that a limit never hides a task the user named."""
    chosen = select_tasks(load_eval_tasks(list(envs), suite, split, None), task_ids)
    if limit is None:
        return chosen
    kept: dict[str, int] = {}
    limited = []
    for task in chosen:
        kept[task.env] = kept.get(task.env, 0) + 1
        if kept[task.env] <= limit:
            limited.append(task)
    return limited
