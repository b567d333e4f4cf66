"""A user's own suite, as the README has them made and run: `cycleqd suite generate db --out mysuite`, then
`cycleqd eval --suite mysuite` and `cycleqd tasks --suite mysuite` with no `--tasks`: the suite's environment is
read off its tasks, a suite no environment recognizes says how to name one, and a suite with no tasks is one line
and creates nothing. Each command runs in this process through the CLI's one error boundary; none reaches Docker
or a model server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cycleqd import display
from cycleqd.envs.registry import BUILTIN_DATA, environment
from cycleqd.envs.task_files import read_task_records
from cycleqd.eval_request import EvalRequest
from tests.cli_in_process import Run, one_line_error


def copy_suite(env: str, out: Path, per_split: int = 3) -> Path:
    """The first tasks of each split of a built-in suite, in a folder of split files as `suite generate` writes."""
    out.mkdir()
    for file in sorted((BUILTIN_DATA / env).glob("*.json*")):
        records = read_task_records(file)[:per_split]
        text = "".join(json.dumps(r) + "\n" for r in records) if file.suffix == ".jsonl" else json.dumps(records)
        (out / file.name).write_text(text)
    return out


def task_keys(env: str, file: Path) -> list[str]:
    """The ids the environment's own loader gives the tasks of a file."""
    return [task.task_id for task in environment(env).load_tasks(file)]


@pytest.fixture
def db_suite(tmp_path: Path) -> Path:
    return copy_suite("db", tmp_path / "mysuite")


# -- 1. the suite's environment, read off its tasks ------------------------------------------------------------------


def test_tasks_lists_a_generated_db_suite_as_db_tasks(db_suite: Path, run_cli: Run) -> None:
    code, out, err = run_cli("tasks", "--suite", str(db_suite), "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(row["id"], row["env"], row["split"]) for row in rows] == [
        (key, "db", "dev") for key in task_keys("db", db_suite / "dev.jsonl")
    ]


def test_eval_on_a_generated_db_suite_plays_its_db_tasks(db_suite: Path, run_cli: Run, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    asked: list[EvalRequest] = []
    monkeypatch.setattr(display, "show_eval", lambda request, *_: asked.append(request))
    code, _, err = run_cli("eval", "--suite", str(db_suite), "--limit", "1", "--db", str(tmp_path / "x.db"))
    assert code == 0, err
    (request,) = asked
    assert request.tasks == ("db",)
    first = task_keys("db", db_suite / "dev.jsonl")[0]
    assert [(t.env, t.split, t.key) for t in request.planned_tasks()] == [("db", "dev", first)]


@pytest.mark.parametrize("env", ["os", "db"])
def test_a_requests_environment_is_its_suites(env: str, tmp_path: Path) -> None:
    suite = copy_suite(env, tmp_path / "suite")
    request = EvalRequest(suite=str(suite), split="test")
    assert request.tasks == (env,)
    (test_file,) = suite.glob("test.json*")
    assert [t.key for t in request.planned_tasks()] == task_keys(env, test_file)
    assert EvalRequest().tasks == ("os", "db", "coding")  # the built-in suites hold every environment
    assert EvalRequest(tasks=("os",), suite=str(suite)).tasks == ("os",)  # a named one is kept as named


def test_a_suite_no_environment_recognizes_says_how_to_name_one(tmp_path: Path, run_cli: Run) -> None:
    suite = tmp_path / "odd.json"
    suite.write_text(json.dumps([{"question": "How many rows?", "answer": "3"}]))
    code, _, err = run_cli("eval", "--suite", str(suite), "--db", str(tmp_path / "x.db"))
    assert one_line_error(code, err) == (f"no environment recognizes the tasks in {suite}: name theirs with "
                                         "--tasks (one of os, db, coding)")  # fmt: skip
    code, _, err = run_cli("tasks", "--suite", str(suite))
    assert one_line_error(code, err).endswith("name theirs with --env (one of os, db, coding)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.json"]


# -- 2. a suite with no tasks ----------------------------------------------------------------------------------------


def empty_suites(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Suites holding no task, each with what its error names as searched."""
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "empty-folder").mkdir()
    split_folder = tmp_path / "splits"
    split_folder.mkdir()
    (split_folder / "train.jsonl").write_text(json.dumps({"description": "echo hi", "evaluation": {"match": "hi"}}))
    (split_folder / "dev.jsonl").write_text("")
    return {
        "a file holding []": (tmp_path / "empty.json", str(tmp_path / "empty.json")),
        "an empty folder": (tmp_path / "empty-folder",
                            f"{tmp_path / 'empty-folder'}: it holds no .json, .jsonl or .jsonl.gz file"),
        "an empty split": (split_folder, str(split_folder / "dev.jsonl")),
    }  # fmt: skip


@pytest.mark.parametrize("tasks", [[], ["--tasks", "os"]], ids=["environment read off the suite", "--tasks os"])
@pytest.mark.parametrize("kind", ["a file holding []", "an empty folder", "an empty split"])
def test_a_suite_with_no_tasks_is_one_line_and_creates_no_store(
    tmp_path: Path, run_cli: Run, kind: str, tasks: list[str]
) -> None:
    suite, searched = empty_suites(tmp_path)[kind]
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli("eval", *tasks, "--suite", str(suite), "--db", str(tmp_path / "x.db"))
    assert one_line_error(code, err) == f"no tasks in {searched}"
    assert sorted(tmp_path.rglob("*")) == before  # no store, nothing beside it
    env_option = ["--env", *tasks[1:]] if tasks else []
    code, _, err = run_cli("tasks", *env_option, "--suite", str(suite))
    assert one_line_error(code, err) == f"no tasks in {searched}"


def test_an_evolve_config_with_an_empty_suite_names_its_task(tmp_path: Path) -> None:
    from cycleqd.evolver.config import ConfigError, load_config

    for expert in ("e1", "e2"):
        (tmp_path / expert).mkdir()
        (tmp_path / expert / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    config = tmp_path / "evolve.yaml"
    config.write_text(f"base: default\ntasks:\n  - {{name: os, env: os, expert: e1, suite: {tmp_path / 'empty'}}}\n"
                      "  - {name: db, env: db, expert: e2}\n")  # fmt: skip
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(error.value) == (f"{config}: field 'tasks[0].suite' (task os): no tasks in {tmp_path / 'empty'}: it "
                                "holds no .json, .jsonl or .jsonl.gz file")  # fmt: skip
