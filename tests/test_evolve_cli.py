"""`cycleqd evolve` and `cycleqd report` end to end: SmolLM2 as the base, three perturbed SmolLM2 experts, real
episodes through `transformers serve` and real sandboxes on a few built-in tasks per environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import RunStatus
from cycleqd.db.store import open_store
from tests.cli_process import CYCLEQD

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


def fake_experts(folder: Path) -> None:
    """Folders the config accepts (a config.json); every test below fails before their weights are read."""
    for expert in ("e1", "e2"):
        (folder / expert).mkdir()
        (folder / expert / "config.json").write_text("{}")


TWO_TASKS = "base: default\ntasks:\n  - {name: os, env: os, expert: e1}\n  - {name: db, env: db, expert: e2}\n"


def one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr and not done.stdout.strip(), done.stdout
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def test_the_ray_key_and_evolve_ray_reach_the_cluster_check(tmp_path: Path) -> None:
    # RaySpec had lost its @dataclass: both raised "TypeError: RaySpec() takes no arguments"
    fake_experts(tmp_path)
    config = tmp_path / "ray.yaml"
    config.write_text(TWO_TASKS + "ray: {address: '127.0.0.1:1', gpus: false}\n")
    db = tmp_path / "x.db"
    done = subprocess.run([CYCLEQD, "evolve", "--config", str(config), "--db", str(db)], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    one_line_error(done, "127.0.0.1:1", "ray start")
    (tmp_path / "plain.yaml").write_text(TWO_TASKS)
    done = subprocess.run([CYCLEQD, "evolve", "--config", "plain.yaml", "--ray", "127.0.0.1:1", "--db", str(db)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    one_line_error(done, "127.0.0.1:1", "ray start")
    assert not db.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("expert: e2}", "expert: e2, selection_split: dve}"),
         ["bad.yaml: field 'tasks[1].selection_split' (task db)", "no split 'dve'", "it has: dev, test, train"]),
        (("expert: e1}", "expert: e1, suite: nowhere}"),
         ["bad.yaml: field 'tasks[0].suite' (task os)", "no task file or folder", "nowhere"]),
        (("tasks:\n", "tasks:\n  - {name: [\n"), ["bad.yaml, line 4, column", "not valid YAML"]),
        (("tasks:\n", "baselines: {search: yes please}\ntasks:\n"),
         ["bad.yaml: field 'baselines.search'", "expected true or false"]),
        (("tasks:\n", "baselines: {models: {all-data SFT: nowhere}}\ntasks:\n"),
         ["bad.yaml: field 'baselines.models.all-data SFT'", "a checkpoint folder with a config.json", "nowhere"]),
    ],
    ids=["split", "suite", "yaml", "search", "model"],
)  # fmt: skip
def test_config_mistakes_name_the_file_and_task_before_any_run(
    tmp_path: Path, change: tuple[str, str], expected: list[str]
) -> None:
    fake_experts(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(TWO_TASKS.replace(*change))
    db = tmp_path / "x.db"
    done = subprocess.run([CYCLEQD, "evolve", "--config", str(config), "--db", str(db)], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    line = one_line_error(done, *expected)
    assert "<unicode string>" not in line
    assert not db.exists()  # found before the run was created (it stayed `running` forever)


def test_the_api_checks_a_config_that_did_not_come_from_a_file(tmp_path: Path) -> None:
    import cycleqd
    from cycleqd.evolver.config import ConfigError, parse_config

    fake_experts(tmp_path)
    tasks = [{"name": "os", "env": "os", "expert": "e1"}, {"name": "db", "env": "db", "expert": "e2",
                                                             "test_split": "tset"}]  # fmt: skip
    config = parse_config({"base": "default", "tasks": tasks}, "mine", tmp_path)
    with pytest.raises(ConfigError, match=r"the config: field 'tasks\[1\].test_split' \(task db\)"):
        cycleqd.evolve(config, db=tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()


def test_show_prints_an_evolutions_scores(tmp_path: Path) -> None:
    from cycleqd.db.store import EpisodeRecord

    db = tmp_path / "evo.db"
    store = open_store(db)
    run = store.create_run("evolve", {"tasks": [{"name": "db", "env": "db"}], "base": "default"})
    model = store.model_id("genome:" + "ab" * 32, "/models/child-1")  # a child's label showed "@genome:a"
    for key, score in (("t1", 1.0), ("t2", 0.0), ("t3", 1.0), ("t4", None)):
        task = store.task_id("db", "builtin", "dev", key, key * 8)
        store.record_episode(EpisodeRecord(run.id, model, task, 0, "completed" if score is not None else "env_error",
                                           score))  # fmt: skip
    store.engine.dispose()
    done = subprocess.run([CYCLEQD, "show", run.id[:6], "--db", str(db), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["results"]  # it was empty: an evolution stores no aggregates
    assert (result["env"], result["split"], result["episodes"], result["errors"]) == ("db", "dev", 4, 1)
    assert result["score"] == pytest.approx(2 / 3) and result["ci95"]["n"] == 3
    table = subprocess.run([CYCLEQD, "show", run.id, "--db", str(db)], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert "0.667" in table.stdout and "child-1@abababab" in table.stdout


def test_sigterm_leaves_the_evolution_resumable_not_running(docker_engine, default_model, smollm_experts,
                                                            tmp_path: Path) -> None:  # noqa: ANN001  # fmt: skip
    config = tmp_path / "evolve.yaml"
    experts = {f"e{k}": str(path) for k, path in enumerate(smollm_experts)}
    config.write_text(CONFIG.format(base=default_model.path, **experts))
    db = tmp_path / "evolve.db"
    child = subprocess.Popen([CYCLEQD, "evolve", "--config", str(config), "--db", str(db)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (db.exists() and open_store(db).list_runs()):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode in (130, 128 + signal.SIGTERM) and "Traceback" not in err, err
    (run,) = open_store(db).list_runs()
    assert run.status == RunStatus.INTERRUPTED  # it stayed `running` forever
    assert f"cycleqd evolve --resume {run.id} --db {db}" in err


def test_every_candidate_evaluator_says_whether_it_races_and_takes_a_race() -> None:
    """The loop hands `race=` to an evaluator that races and `race=None` to one that does not. `evolve --ray`'s
    evaluator inherited `races = True` with an `evaluate` that took no race: its first child was a TypeError."""
    import inspect

    from cycleqd.evolution.evaluator import EpisodeEvaluator
    from cycleqd.ray.backend import RayCandidateEvaluator, RayEpisodeEvaluator

    for evaluator, races in ((EpisodeEvaluator, True), (RayEpisodeEvaluator, False), (RayCandidateEvaluator, False)):
        assert evaluator.races is races, evaluator
        race = inspect.signature(evaluator.evaluate).parameters.get("race")
        assert race is not None and race.default is None, evaluator


def test_runs_rm_says_where_an_evolutions_files_stay(tmp_path: Path) -> None:
    db = tmp_path / "evo.db"
    store = open_store(db)
    run = store.create_run("evolve", {"tasks": [], "base": "default"})
    store.engine.dispose()
    final = tmp_path / "cache" / "evolve" / "runs" / run.id / "final-model"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(bytes(3_000_000))
    done = subprocess.run([CYCLEQD, "runs", "rm", run.id[:6], "--db", str(db)], capture_output=True, text=True,
                          env={**os.environ, "CYCLEQD_CACHE": str(tmp_path / "cache"), "COLUMNS": "300"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"removed run {run.id}" in done.stdout and f"{final.parent} (3 MB" in done.stdout, done.stdout
    assert (final / "model.safetensors").is_file() and open_store(db).get_run(run.id) is None
