"""`cycleqd demo` end to end at a tiny budget: SFT experts, an evolution, the final table; a second run reuses
what the first made."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import CYCLEQD

TINY = ["--sft-tasks", "2", "--sft-epochs", "1", "--eval-limit", "2", "--generations", "1", "--max-tokens", "32",
        "--rounds", "1", "--db-train", "4"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(2100)  # on a cold cache it fine-tunes three experts: > 600 s on a loaded CI machine
def test_the_demo_runs_end_to_end_and_reuses_its_cache(docker_engine, default_model, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "demo.db"
    wide = {**os.environ, "COLUMNS": "200"}  # lines as printed, not wrapped at a pipe's 80 columns
    first = subprocess.run([CYCLEQD, "demo", *TINY, "--db", str(db)], capture_output=True, text=True, timeout=1800,
                           env=wide)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 train tasks × 1 epochs per environment" in first.stdout and "estimate on 2 cores: " in first.stdout
    for row in ("base", "expert os", "expert db", "expert coding", "naive merge", "CycleQD final"):
        assert row in first.stdout
    assert "stage times: data" in first.stdout and "evolution and the final table" in first.stdout
    second = subprocess.run([CYCLEQD, "demo", *TINY, "--db", str(db)], capture_output=True, text=True, timeout=300,
                            env=wide)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "this demo already ran" in second.stdout and "CycleQD final" in second.stdout
    assert "fine-tuning" not in second.stdout  # the experts came from the cache
