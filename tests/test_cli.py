"""The command line as a user runs it: a real process, real engine, real images."""

from __future__ import annotations

import json

import pytest

from cycleqd.eval.tasks import load_eval_tasks
from tests.cli_process import cycleqd


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "doctor"),
        (("images", "build"), "hash of its recipe"),
        (("sandbox", "selfcheck"), "persistent session"),
        (("engine", "start"), "debootstrap"),
    ],
)
def test_help_explains(args: tuple[str, ...], expected: str) -> None:
    done = cycleqd(*args, "--help")
    assert done.returncode == 0 and expected in " ".join(done.stdout.split())


def test_doctor_reports_engine_and_images(os_image: str) -> None:
    done = cycleqd("doctor")
    lines = done.stdout.splitlines()
    assert any(line.startswith("OK   docker engine") for line in lines), done.stdout
    assert any(line.startswith("OK   image os-default") and os_image in line for line in lines), done.stdout
    assert any(line.startswith("OK   torch") for line in lines), done.stdout
    assert any(line.startswith("OK   OS check witness") for line in lines), done.stdout  # root on the engine's host
    assert any(line.split()[1:4] == ["sandbox", "disk", "cap"] for line in lines), done.stdout  # said here, once
    vllm = next(line for line in lines if line.split()[1] == "vllm")
    assert "`--server auto` uses" in vllm or "`--server auto` serves" in vllm, vllm  # which engine, for which jobs
    failed = [line for line in lines if line.startswith("FAIL")]
    assert done.returncode == (1 if failed else 0)


def test_selfcheck_passes_on_this_machine(os_image: str) -> None:
    done = cycleqd("sandbox", "selfcheck")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines() if line.strip()[:4] in ("OK  ", "FAIL")] == ["OK"] * 6


def test_second_image_build_prints_nothing(os_image: str) -> None:
    done = cycleqd("images", "build", "os-default")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_unknown_image_is_a_clear_error(docker_engine: object) -> None:
    done = cycleqd("images", "build", "nope")
    assert done.returncode == 2 and "unknown sandbox image 'nope'" in done.stderr


def test_reap_reports_what_it_removed(docker_engine: object) -> None:
    done = cycleqd("sandbox", "reap")
    assert done.returncode == 0 and done.stdout.startswith("removed ")


def test_tasks_lists_every_id_eval_takes_in_its_environments_own_words() -> None:
    done = cycleqd("tasks", "--env", "os,db,coding", "--json")
    assert done.returncode == 0, done.stderr
    listed = {row["id"]: row for row in json.loads(done.stdout)}
    tasks = {t.key: t for t in load_eval_tasks(["os", "db", "coding"], "builtin", "dev", None)}
    assert listed.keys() == tasks.keys() and len(tasks) > 40
    for key, row in listed.items():
        task = tasks[key].task
        text = row["description"]
        assert row["env"] == tasks[key].env and "\n" not in text and len(text) <= 100
        if row["env"] in ("os", "db"):
            assert " ".join(task.description.split()).startswith(text.rstrip("…"))  # type: ignore[attr-defined]
        else:  # the docstring's first paragraph, not the signature the prompt starts with
            prompt = " ".join(task.prompt.split())  # type: ignore[attr-defined]
            assert not text.startswith(("def ", "from ", "import ")) and text.rstrip("…") in prompt
