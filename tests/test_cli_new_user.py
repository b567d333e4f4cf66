"""What a new user reported of the command line: `cycleqd runs` for scripts (`--json`, and a piped table not cut at
80 columns), error lines that named the wrong thing or suggested the very command that failed, and help that
promised what the command does not do. Each command runs in this process through the CLI's one error boundary,
with its output captured (no terminal, as in a pipe); none reaches Docker or a model server."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from cycleqd.db import open_store
from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import Aggregate, RunStatus
from cycleqd.envs.registry import environment
from cycleqd.eval_request import EvalRequest
from tests.cli_in_process import Run, one_line_error

# -- 12. `cycleqd runs` for scripts ----------------------------------------------------------------------------------

LONG_MODEL = "/models/" + "a-checkpoint-folder-with-a-long-descriptive-name-" * 3 + "final"


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, str, str]:
    """A store holding a finished eval (db scored 0.5, os with nothing scored) of a model with a long path, and an
    evolution whose final model has test scores."""
    db = tmp_path / "runs.db"
    store = open_store(db)
    config = {**EvalRequest(tasks=("db", "os"), limit=2).snapshot(), "model": LONG_MODEL}
    evaluation = store.create_run("eval", config)
    model = store.model_id("sha256:" + "ab" * 32, LONG_MODEL)
    for env, score in (("db", 0.5), ("os", None)):
        store.save_aggregate(Aggregate(run_id=evaluation.id, model_id=model, env=env, split="dev", episodes=2,
                                       errors=0 if score is not None else 2, score=score, metrics={}))  # fmt: skip
    store.set_run_status(evaluation.id, RunStatus.COMPLETED)
    tasks = [{"name": "shell", "env": "os", "test_split": "test"}, {"name": "sql", "env": "db", "test_split": "test"}]
    evolution = store.create_run("evolve", {"base": "default", "tasks": tasks})
    EvolutionStore(store, evolution.id).add_candidate("final", 0, 0, test_scores={"shell": 0.25, "sql": 0.75})
    store.engine.dispose()
    return db, evaluation.id, evolution.id


def test_runs_json_is_one_object_per_run_with_values(two_runs: tuple[Path, str, str], run_cli: Run) -> None:
    db, eval_id, evolve_id = two_runs
    code, out, err = run_cli("runs", "--db", str(db), "--json")
    assert code == 0, err
    runs = {row["run"]: row for row in json.loads(out)}
    assert list(runs) == [evolve_id, eval_id]  # newest first, as the table
    evaluation, evolution = runs[eval_id], runs[evolve_id]
    assert (evaluation["kind"], evaluation["status"], evaluation["model"]) == ("eval", "completed", LONG_MODEL)
    assert evaluation["tasks"] == ["db", "os"]
    assert evaluation["scores"] == [{"env": "db", "split": "dev", "score": 0.5},
                                    {"env": "os", "split": "dev", "score": None}]  # fmt: skip
    for moment in (evaluation["created"], evaluation["finished"], evolution["created"]):
        assert datetime.fromisoformat(moment).utcoffset().total_seconds() == 0, moment  # ISO-8601, in UTC
    assert (evolution["kind"], evolution["status"], evolution["finished"]) == ("evolve", "running", None)
    assert evolution["tasks"] == ["shell", "sql"]
    assert evolution["scores"] == [{"task": "shell", "env": "os", "split": "test", "score": 0.25},
                                   {"task": "sql", "env": "db", "split": "test", "score": 0.75}]  # fmt: skip


def test_a_piped_runs_table_is_not_cut_at_80_columns(two_runs: tuple[Path, str, str], run_cli: Run) -> None:
    db, eval_id, evolve_id = two_runs
    code, out, err = run_cli("runs", "--db", str(db))
    assert code == 0, err
    (eval_line,) = [line for line in out.splitlines() if eval_id in line]
    assert LONG_MODEL in eval_line and "db 0.50 os –" in eval_line, out  # whole, on the run's own line
    (evolve_line,) = [line for line in out.splitlines() if evolve_id in line]
    assert "final shell 0.25 sql 0.75" in evolve_line, out


# -- 13. error lines that say what was wrong and what was expected ---------------------------------------------------


@pytest.mark.parametrize("command", [["runs"], ["show", "abc"], ["eval", "--tasks", "db"], ["runs", "rm", "abc"]])
def test_a_folder_as_store_says_it_is_a_folder(tmp_path: Path, run_cli: Run, command: list[str]) -> None:
    code, _, err = run_cli(*command, "--db", str(tmp_path))
    line = one_line_error(code, err)
    assert line == f"--db {tmp_path}: that is a folder; a store is one SQLite file, e.g. --db {tmp_path / 'cycleqd.db'}"
    assert "cycleqd eval" not in line and list(tmp_path.iterdir()) == []


def test_a_truncated_json_suite_is_reported_as_json(tmp_path: Path, run_cli: Run) -> None:
    suite = tmp_path / "mine.json"
    suite.write_text('[{"description": "x"')
    expected = f"{suite}: field 'line 1, column 21': expected JSON: a list of tasks or one task (the file ends before the JSON does)"  # noqa: E501
    for args in (["tasks", "--suite", str(suite), "--env", "os"], ["tasks", "--suite", str(suite)],
                 ["eval", "--suite", str(suite), "--db", str(tmp_path / "x.db")]):  # fmt: skip
        code, _, err = run_cli(*args)
        assert one_line_error(code, err) == expected, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json"]


def test_json_lines_in_a_json_file_are_still_read(tmp_path: Path) -> None:
    suite = tmp_path / "lines.json"
    suite.write_text("".join(json.dumps({"description": d, "evaluation": {"match": d}}) + "\n" for d in "ab"))
    assert [t.description for t in environment("os").load_tasks(suite)] == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"description": "a"\n')
    with pytest.raises(ValueError, match="bad.jsonl: field 'line 1': expected one JSON object per line"):
        environment("os").load_tasks(tmp_path / "bad.jsonl")


def fake_experts(folder: Path) -> None:
    """Folders the config accepts (a config.json); every test below fails before their weights are read."""
    for expert in ("e1", "e2"):
        (folder / expert).mkdir()
        (folder / expert / "config.json").write_text("{}")


TWO_TASKS = "base: default\ntasks:\n  - {name: os, env: os, expert: e1}\n  - {name: db, env: db, expert: e2}\n"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("tasks:\n", "generation: 3\ntasks:\n"), "unknown key 'generation' in {config}; did you mean 'generations'?"),
        (("expert: e2}", "exprt: e2}"), "unknown key 'tasks[1].exprt' in {config}; did you mean 'tasks[1].expert'?"),
        (("tasks:\n", "sampler: {alpha_lo: 0.4}\ntasks:\n"),
         "unknown key 'sampler.alpha_lo' in {config}; did you mean 'sampler.alpha_low'?"),
        (("tasks:\n", "bc_ranges: {oss: [0, 1], db: [0, 1]}\ntasks:\n"),
         "unknown key 'bc_ranges.oss' in {config}; did you mean 'bc_ranges.os'?"),
    ],
    ids=["top level", "task", "sampler", "bc_ranges"],
)  # fmt: skip
def test_an_unknown_config_key_suggests_the_nearest(
    tmp_path: Path, run_cli: Run, change: tuple[str, str], expected: str
) -> None:
    fake_experts(tmp_path)
    config = tmp_path / "evolve.yaml"
    config.write_text(TWO_TASKS.replace(*change))
    code, _, err = run_cli("evolve", "--config", str(config), "--db", str(tmp_path / "x.db"))
    assert one_line_error(code, err) == expected.format(config=config)
    assert not (tmp_path / "x.db").exists()


def test_an_unknown_config_key_with_no_near_one_lists_the_keys(tmp_path: Path) -> None:
    from cycleqd.evolver.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"^unknown key 'zzzz' in mine; the keys here: base, baselines, bc_ranges"):
        parse_config({"base": "default", "zzzz": 1}, "mine", tmp_path)


def test_evolve_with_both_config_and_resume_says_give_one(tmp_path: Path, run_cli: Run) -> None:
    code, _, err = run_cli("evolve", "--resume", "X", "--config", "Y", "--db", str(tmp_path / "x.db"))
    line = one_line_error(code, err)
    assert line.startswith("--config and --resume: give one of them, not both"), line
    code, _, err = run_cli("evolve", "--db", str(tmp_path / "x.db"))
    assert one_line_error(code, err) == "give --config FILE for a new run, or --resume RUN"


def test_a_folder_as_evolve_config_says_it_is_a_folder(tmp_path: Path, run_cli: Run) -> None:
    (tmp_path / "experts").mkdir()
    code, _, err = run_cli("evolve", "--config", str(tmp_path / "experts"), "--db", str(tmp_path / "x.db"))
    line = one_line_error(code, err)
    assert line == f"{tmp_path / 'experts'}: that is a folder; a config is one YAML file (e.g. evolve.yaml)"
    code, _, err = run_cli("evolve", "--config", str(tmp_path / "nowhere.yaml"), "--db", str(tmp_path / "x.db"))
    assert one_line_error(code, err) == f"{tmp_path / 'nowhere.yaml'}: no such config file"


# -- 14. help that says what the command does ------------------------------------------------------------------------


def test_model_help_promises_no_reference_check(run_cli: Run) -> None:
    code, out, _ = run_cli("model", "--help")
    assert code == 0 and "reference" not in out, out
    assert "The embedded default model (SmolLM2-135M-Instruct)" in out and "default" in out.split("Commands:")[1]


def test_eval_split_help_gives_every_builtin_suites_split_sizes(run_cli: Run) -> None:
    code, out, _ = run_cli("eval", "--help")
    text = " ".join(out.split())
    assert code == 0 and "OS and DB suites" not in text
    sizes = re.search(r"train/dev/test tasks: OS (\d+)/(\d+)/(\d+), DB (\d+)/(\d+)/(\d+), coding (\d+)/(\d+)/(\d+)",
                      text)  # fmt: skip
    assert sizes, text
    numbers = iter(int(n) for n in sizes.groups())
    for env in ("os", "db", "coding"):  # the help stays true to the suites
        for split in ("train", "dev", "test"):
            assert len(environment(env).builtin_tasks(split)) == next(numbers), (env, split)
    assert "coding 82/41/41 of HumanEval's 164" in text
