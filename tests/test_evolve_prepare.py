"""Before an evolution's first generation: experts that would make it meaningless are refused up front, and the run
exists (with its stage shown) while the SVD cache is built."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cycleqd.db.monitor_store import open_monitor_store
from cycleqd.db.store import open_store
from cycleqd.monitor.queries.evolution_run import evolution_progress
from tests.checkpoints import perturbed_checkpoint
from tests.cli_process import CYCLEQD_HERE

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
base: {base}
tasks:
  - {{name: os, env: os, expert: {e0}, limit: 1}}
  - {{name: db, env: db, expert: {e1}, limit: 1}}
generations: 1
bins: 3
eval: {{concurrency: 1, max_tokens: 16, rounds: 1}}
"""


def evolve(config: Path, db: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*CYCLEQD_HERE, "evolve", "--config", str(config), "--db", str(db)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})  # fmt: skip


@pytest.fixture(scope="module")
def two_experts(default_model, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("experts")
    return [perturbed_checkpoint(default_model.path, root / f"expert-{k}", seed=20 + k, scale=0.05) for k in range(2)]


@pytest.mark.slow
def test_experts_equal_to_the_base_or_to_each_other_are_refused(default_model, two_experts, tmp_path: Path) -> None:  # noqa: ANN001
    resaved = shutil.copytree(default_model.path, tmp_path / "base-resaved")
    (resaved / "generation_config.json").write_text('{"do_sample": false}')  # other files, the same weights
    cases = {
        "same weights as the base": (resaved, two_experts[0]),
        "the experts of tasks os and db have the same weights": (two_experts[1], two_experts[1]),
    }
    for message, (e0, e1) in cases.items():
        config = tmp_path / "evolve.yaml"
        config.write_text(CONFIG.format(base=default_model.path, e0=e0, e1=e1))
        db = tmp_path / f"{len(message)}.db"
        done = evolve(config, db)
        _out, err = done.communicate(timeout=300)
        assert done.returncode == 2, err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert open_store(db).list_runs() == []  # refused before any run exists


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_run_exists_and_shows_its_stage_while_the_svd_cache_is_built(
    default_model,
    two_experts,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    config = tmp_path / "evolve.yaml"
    config.write_text(CONFIG.format(base=default_model.path, e0=two_experts[0], e1=two_experts[1]))
    db = tmp_path / "evolve.db"
    process = evolve(config, db, {"CYCLEQD_CACHE": str(tmp_path / "cache")})  # an empty SVD cache
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not any(s.startswith("building the SVD cache") for s in seen):
            if db.exists() and (runs := open_store(db).list_runs()):
                progress = evolution_progress(open_monitor_store(db), runs[0].id)
                if progress.stage:
                    seen.add(progress.stage)
                    assert progress.generations_done == 0
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=120)
    assert "building the SVD cache of 2 expert(s)" in seen, seen
    [run] = open_store(db).list_runs()
    assert run.kind == "evolve"
