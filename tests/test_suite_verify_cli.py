"""`cycleqd suite verify` as a user reads it: tasks that could not be loaded count in the total, and a failure says
what the grader expected."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli_process import CYCLEQD_HERE

ROOT = Path(__file__).resolve().parents[1]
TASKS = [
    {"description": "Print the word ok.", "create": {"local": "default"},
     "evaluation": {"match": "ok", "example": "echo ok"}},
    {"description": "What is six times seven?", "create": {"local": "default"},
     "evaluation": {"match": "42", "example": "echo 41"}},  # its gold is wrong: the grader expects 42
    {"description": "A task with no evaluation at all."},
]  # fmt: skip


@pytest.mark.slow
def test_unloadable_tasks_count_and_a_failure_shows_what_was_expected(os_image: str, tmp_path: Path) -> None:
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(TASKS))
    done = subprocess.run([*CYCLEQD_HERE, "suite", "verify", str(suite), "--env", "os"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 1, done.stderr
    out = " ".join(done.stdout.split())
    assert "FAIL suite.json#1" in out and "expected: the answer '42'" in out
    assert "bad task" in out
    assert "gold passes 1/3 (33.3%) of the tasks: 2 ran (1 passed), 0 not run, 1 could not be loaded" in out
