"""Where tasks come from: the task files under a path, which environment they belong to, and a suite's tasks.

A suite is "builtin" (each environment's own, `Environment.builtin_tasks`) or a file or folder of task files
(.json, .jsonl, .jsonl.gz) in the environment's format.
"""

from __future__ import annotations

from pathlib import Path

from cycleqd.envs.errors import TaskFormatError
from cycleqd.envs.registry import Task, UnknownSplitError, environment, names
from cycleqd.envs.task_files import read_task_records

BUILTIN = "builtin"
_FALLBACK = "os"  # AgentBench's OS files have no field that only they have


def task_files(path: Path) -> list[Path]:
    """`path` itself when it is a file, else every task file under it, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.name.endswith((".json", ".jsonl", ".jsonl.gz")) and p.is_file())


def guess_environment(path: Path) -> str:
    """The environment that recognizes the first readable task of the files under `path` (os when none does)."""
    for file in task_files(path):
        compressed = file.name.endswith(".gz")
        try:
            records = read_task_records(file) if not compressed else [{}]
        except (TaskFormatError, OSError, UnicodeDecodeError):
            continue
        first = records[0] if records and isinstance(records[0], dict) else {}
        if not first and not compressed:
            continue
        for name in names():
            if environment(name).recognizes(first, file):
                return name
        return _FALLBACK
    return _FALLBACK


def suite_tasks(env: str, suite: str, split: str) -> list[Task]:
    """The tasks of `env` in a suite: the built-in one's split; for a folder holding split files (train.json,
    dev.jsonl, …) that split's files, and an error when it has none; otherwise every task of the files under the
    path (`split` only labels them)."""
    found = environment(env)
    if suite == BUILTIN:
        return found.builtin_tasks(split)
    path = Path(suite)
    if not path.exists():
        raise TaskFormatError(suite, None, "(path)", "'builtin', or an existing task file or folder")
    return [task for file in split_task_files(path, split) for task in found.load_tasks(file)]


# Names a folder's files take when they are a split: a folder holding any of them is split, and reading it whole
# for a split it lacks would hand a test the training tasks.
SPLIT_NAMES = ("train", "dev", "validation", "val", "test", "in-family", "transfer")


def split_task_files(path: Path, split: str) -> list[Path]:
    """The files of `split` in a suite: `<split>.json*` in a split folder (one holding split files); every task
    file of a folder without splits (or of a file), whatever `split` says."""
    if not path.is_dir():
        return [path]
    mine = sorted(path.glob(f"{split}.json*"))
    if mine:
        return mine
    splits = sorted({f.name.split(".json")[0] for f in path.glob("*.json*") if f.name.split(".json")[0] in SPLIT_NAMES})
    if splits:
        raise UnknownSplitError(f"the suite {path} has no split {split!r}; it has: {', '.join(splits)}")
    return task_files(path)
