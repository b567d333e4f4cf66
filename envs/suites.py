"""Where tasks come from: the task files under a path, which environment they belong to, and a suite's tasks.

A suite is "builtin" (each environment's own, `Environment.builtin_tasks`) or a file or folder of task files
(.json, .jsonl, .jsonl.gz) in the environment's format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cycleqd.envs.errors import NoTasksError, TaskFormatError
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
    return recognized_environment(task_files(path)) or _FALLBACK


def recognized_environment(files: list[Path]) -> str | None:
    """The environment that recognizes the first task of the first of `files` that holds a readable one; None when
    none does (or no file holds one)."""
    for file in files:
        first = _first_record(file)
        if first is None:
            continue
        return next((name for name in names() if environment(name).recognizes(first, file)), None)
    return None


def _first_record(file: Path) -> dict[str, Any] | None:
    """A file's first task record; {} for a compressed one (recognized by its name alone); None when the file cannot
    be read or its first record is empty or not an object."""
    if file.name.endswith(".gz"):
        return {}
    try:
        records = read_task_records(file)
    except (TaskFormatError, OSError, UnicodeDecodeError):
        return None
    return records[0] if records and isinstance(records[0], dict) and records[0] else None


def suite_environment(suite: str, split: str) -> str | None:
    """The environment whose tasks a file or folder suite holds for `split`: the one that recognizes its first task
    (`recognized_environment`), None when none does; NoTasksError when its files hold no task at all, and
    TaskFormatError when none is recognized and a file cannot be parsed."""
    path = suite_path(suite)
    files = split_task_files(path, split)
    found = recognized_environment(files)
    if found is None and all(_holds_no_record(file) for file in files):
        raise NoTasksError(path, files)
    return found


def _holds_no_record(file: Path) -> bool:
    # A file that cannot be parsed raises its TaskFormatError: no environment is there to say what is wrong, and
    # "no environment recognizes the tasks" sent the user to name one for a file cut short.
    try:
        return not read_task_records(file)
    except (OSError, UnicodeDecodeError):
        return False  # something is there (a compressed file): its environment's loader reads it


def suite_path(suite: str) -> Path:
    """A suite's file or folder; TaskFormatError when there is none."""
    path = Path(suite)
    if not path.exists():
        raise TaskFormatError(suite, None, "(path)", "'builtin', or an existing task file or folder")
    return path


def suite_tasks(env: str, suite: str, split: str) -> list[Task]:
    """The tasks of `env` in a suite: the built-in one's split; for a folder holding split files (train.json,
    dev.jsonl, …) that split's files, and an error when it has none; otherwise every task of the files under the
    path (`split` only labels them). NoTasksError when the files read hold none."""
    found = environment(env)
    if suite == BUILTIN:
        return found.builtin_tasks(split)
    path = suite_path(suite)
    files = split_task_files(path, split)
    tasks = [task for file in files for task in found.load_tasks(file)]
    if not tasks:  # an evaluation of nothing would "complete" with no score
        raise NoTasksError(path, files)
    return tasks


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
