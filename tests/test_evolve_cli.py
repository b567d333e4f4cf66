"""`cycleqd evolve` and `cycleqd report` end to end: SmolLM2 as the base, three perturbed SmolLM2 experts, real
episodes through `transformers serve` and real sandboxes on a few built-in tasks per environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import open_store

from tests.conftest import perturbed_checkpoint
from tests.test_cli import CYCLEQD

pytestmark = pytest.mark.slow

CONFIG = """
base: {base}
tasks:
  - {{name: os, env: os, expert: {e0}, limit: 1}}
  - {{name: db, env: db, expert: {e1}, limit: 1}}
  - {{name: coding, env: coding, expert: {e2}, limit: 1}}
generations: 2
bins: 3
seed: 3
eval: {{concurrency: 2, max_tokens: 32, rounds: 2}}
"""


@pytest.fixture(scope="module")
def smollm_experts(default_model, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("smollm-experts")
    return [perturbed_checkpoint(default_model.path, root / f"expert-{k}", seed=10 + k, scale=0.05) for k in range(3)]


@pytest.mark.timeout(1800)  # eleven candidates' episodes on a 2-core CPU
def test_evolve_runs_end_to_end_and_reports(docker_engine, default_model, smollm_experts, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "evolve.yaml"
    experts = {f"e{k}": str(path) for k, path in enumerate(smollm_experts)}
    config.write_text(CONFIG.format(base=default_model.path, **experts))
    db = tmp_path / "evolve.db"
    done = subprocess.run([CYCLEQD, "evolve", "--config", str(config), "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    table = {row["model"]: row for row in result["table"]}
    assert set(table) == {"base", "expert os", "expert db", "expert coding", "naive merge", "CycleQD final"}
    assert all(set(row["scores"]) == {"os", "db", "coding"} for row in table.values())
    assert (Path(result["final_model"]) / "config.json").is_file()

    store = open_store(db)
    evo = EvolutionStore(store, result["run"])
    assert [a.task_name for a in evo.archives()] == ["os", "db", "coding"]
    assert [g.number for g in evo.generations()] == [0, 1, 2]
    children = evo.candidates("child")
    assert len(children) == 2 and all(len(c.parents) == 2 and c.status == "inserted" for c in children)
    # every selection score is the mean of that candidate's stored episodes: 1 task per env, 3 per candidate
    splits = {t.id: t.split for t in store.tasks()}
    episodes = store.episodes(result["run"])
    for candidate in [*evo.candidates("expert"), *children]:
        mine = [e for e in episodes if e.model_id == candidate.model_id and splits[e.task_id] != "test"]
        assert len(mine) == 3
        for name, env in (("os", "os"), ("db", "db"), ("coding", "coding")):
            ids = {t.id for t in store.tasks() if t.env == env}
            scores = [e.score for e in mine if e.task_id in ids and e.score is not None]
            assert candidate.scores[name] == pytest.approx(sum(scores) / len(scores))
    assert evo.cells() and all(c.quality >= 0 for c in evo.cells())

    out = tmp_path / "report"
    shown = subprocess.run([CYCLEQD, "report", result["run"], "--db", str(db), "--out", str(out)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "CycleQD final" in shown.stdout and "naive merge" in shown.stdout
    for name in ("archive-os.png", "archive-db.png", "archive-coding.png", "qd-metrics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evolve_refuses_bad_input_clearly(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("base: default\ntasks: []\n")
    done = subprocess.run([CYCLEQD, "evolve", "--config", str(config), "--db", str(tmp_path / "x.db")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "field 'tasks': expected a list of at least two tasks" in done.stderr
    neither = subprocess.run([CYCLEQD, "evolve"], capture_output=True, text=True)
    assert neither.returncode == 2 and "give --config FILE" in neither.stderr
