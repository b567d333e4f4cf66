"""Which tasks an evaluation runs: the built-in suites or a user's files, per environment and split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from envs.coding import CodingTask, humaneval_path, load_coding_tasks
from envs.db_tasks import DBTask, load_db_tasks
from envs.episode import ENVIRONMENTS
from envs.os_tasks import OSTask, load_os_tasks
from envs.suite_verify import task_files

ENVS = ENVIRONMENTS
BUILTIN = Path(__file__).resolve().parents[1] / "envs" / "data"
# The built-in coding suite is HumanEval, which has no splits of its own; an evolution needs disjoint selection
# and test sets, so its problems are dealt round-robin: every 4th to dev, the next to test, the other half to train.
HUMANEVAL_SPLITS = {"dev": (0,), "test": (1,), "train": (2, 3)}
LOADERS = {"os": load_os_tasks, "db": load_db_tasks, "coding": load_coding_tasks}


@dataclass(frozen=True)
class EvalTask:
    env: str
    suite: str
    split: str
    key: str  # the task's id within its suite
    task: OSTask | DBTask | CodingTask

    @property
    def content_hash(self) -> str:
        content = asdict(self.task)
        for gold_only in (f.name for f in fields(self.task) if f.metadata.get("gold_only")):
            del content[gold_only]
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def suite_files(env: str, suite: str, split: str) -> list[Path]:
    if suite != "builtin":
        return task_files(Path(suite))
    if env == "coding":
        if split not in HUMANEVAL_SPLITS:
            raise ValueError(f"the built-in coding suite has no split {split!r}; it has: dev, test, train")
        return [humaneval_path()]
    folder = BUILTIN / env
    files = sorted(folder.glob(f"{split}.json*"))
    if not files:
        known = sorted({p.name.split(".")[0] for p in folder.glob("*.json*")})
        raise ValueError(f"the built-in {env} suite has no split {split!r}; it has: {', '.join(known)}")
    return files


def load_eval_tasks(envs: list[str], suite: str, split: str, limit: int | None) -> list[EvalTask]:
    """Tasks of every env (at most `limit` each), in a stable order."""
    tasks: list[EvalTask] = []
    for env in envs:
        if env not in ENVS:
            raise ValueError(f"unknown environment {env!r}; choose from {', '.join(ENVS)}")
        found = [
            EvalTask(env, suite, split, task.task_id, task)
            for path in suite_files(env, suite, split)
            for task in LOADERS[env](path)
        ]
        if env == "coding" and suite == "builtin":
            found = [t for i, t in enumerate(found) if i % 4 in HUMANEVAL_SPLITS[split]]
        tasks.extend(found[:limit] if limit else found)
    return tasks


def select_tasks(tasks: list[EvalTask], task_ids: list[str] | None) -> list[EvalTask]:
    """Only the tasks named (by `EvalTask.key`, as `cycleqd tasks` prints it), in the order given."""
    if not task_ids:
        return tasks
    by_key = {task.key: task for task in tasks}
    unknown = [key for key in task_ids if key not in by_key]
    if unknown:
        raise ValueError(
            f"--task-ids: no task {', '.join(map(repr, unknown))} among the {len(tasks)} selected by --tasks, --suite "
            "and --split (list them with: cycleqd tasks)"
        )
    return [by_key[key] for key in dict.fromkeys(task_ids)]
