"""Errors of the environments: bad task files (naming file, task index and field), suites that hold no task, and
broken episodes."""

from __future__ import annotations

from pathlib import Path


class TaskFormatError(ValueError):
    """A task file does not have the shape its format requires."""

    def __init__(self, source: str, index: int | None, field: str, expected: str) -> None:
        where = f"{source}" + (f", task {index}" if index is not None else "")
        super().__init__(f"{where}: field '{field}': expected {expected}")
        self.source, self.index, self.field, self.expected = source, index, field, expected


class EpisodeSetupError(RuntimeError):
    """The environment could not be prepared (an init script failed, the engine hiccuped). Not the model's fault:
    the episode is recorded as an environment error and may be retried."""


class ScriptUnavailableError(RuntimeError):
    """A task refers to a script file that is neither native nor in the scripts folder given."""


class UnknownEnvironmentError(ValueError):
    """No environment is registered under this name."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown environment {name!r}: choose from {', '.join(known)}")
        self.name, self.known = name, known


class NoTasksError(ValueError):
    """A suite holds no task where it was read: the message names the file, or the folder and what it lacks."""

    def __init__(self, path: Path, files: list[Path]) -> None:
        if not files:
            searched = f"{path}: it holds no .json, .jsonl or .jsonl.gz file"
        elif len(files) == 1:
            searched = str(files[0])
        else:
            searched = f"{path}: its {len(files)} task files are empty"
        super().__init__(f"no tasks in {searched}")
        self.path, self.files = path, files
