"""Reading task files: a JSON list, a single JSON object, or JSONL — the shapes AgentBench's files come in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cycleqd.envs.errors import TaskFormatError

T = TypeVar("T")


def read_task_records(path: Path) -> list[Any]:
    """The raw records of a JSON list, a single JSON object, or JSONL (in a .json file too, as some are)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole:
        try:
            return _json_lines(path, text)
        except TaskFormatError:
            if path.suffix != ".json":
                raise
            # Named JSON, so its error is JSON's: a list cut short was reported as line 1 of bad JSONL.
            problem = "the file ends before the JSON does" if whole.pos >= len(text.rstrip()) else whole.msg
            where = f"line {whole.lineno}, column {whole.colno}"
            raise TaskFormatError(str(path), None, where, f"JSON: a list of tasks or one task ({problem})") from None
    return data if isinstance(data, list) else [data]


def _json_lines(path: Path, text: str) -> list[Any]:
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TaskFormatError(str(path), None, f"line {line_no}", f"one JSON object per line ({exc.msg})") from exc
    return records


def load_leniently(
    path: Path, parse: Callable[[Any, str, int], T], records: Callable[[Path], list[Any]] = read_task_records
) -> tuple[list[T], list[TaskFormatError]]:
    """The well-formed tasks of a file, and an error for each malformed one (for suite authors' reports)."""
    tasks, errors = [], []
    for index, record in enumerate(records(path)):
        try:
            tasks.append(parse(record, str(path), index))
        except TaskFormatError as exc:
            errors.append(exc)
    return tasks, errors
