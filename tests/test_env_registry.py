"""The environment registry: a fourth environment registered inside a test runs through the real orchestrator,
with a real sandbox, the real default model and a real store; and nothing outside `envs/` names an environment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cycleqd.db import open_store
from cycleqd.envs.episode import EpisodeStatus
from cycleqd.envs.errors import UnknownEnvironmentError
from cycleqd.envs.registry import Environment, environment, names
from cycleqd.envs.suites import guess_environment
from cycleqd.eval.orchestrator import EvalSettings, Orchestrator, summarize
from cycleqd.eval.tasks import load_eval_tasks
from tests.echo_environment import EchoEnvironment

ROOT = Path(__file__).resolve().parents[1]


def test_a_registered_environment_is_known_everywhere(echo_environment: EchoEnvironment, tmp_path: Path) -> None:
    assert names()[:3] == ("os", "db", "coding") and "echo" in names()
    assert environment("echo") is echo_environment
    (tmp_path / "words.json").write_text('[{"echo": "x"}]')
    assert guess_environment(tmp_path) == "echo"
    assert [t.key for t in load_eval_tasks(["echo"], "builtin", "dev", limit=1)] == ["echo-0"]
    # what the base gives an environment that says nothing more: its id as its words, no gold to count
    (task,) = load_eval_tasks(["echo"], "builtin", "dev", limit=1)
    assert environment("echo").describe(task.task) == "echo-0" and environment("echo").gold_texts(task.task) == []
    assert isinstance(echo_environment, Environment) and echo_environment.gold_rounds == 1


def test_an_unknown_environment_names_the_known_ones() -> None:
    with pytest.raises(UnknownEnvironmentError, match="unknown environment 'web': choose from os, db, coding"):
        environment("web")


@pytest.mark.slow
async def test_a_fourth_environment_runs_through_the_orchestrator(
    echo_environment: EchoEnvironment,
    tserve,
    default_model,
    os_image: str,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    store = open_store(tmp_path / "echo.db")
    tasks = load_eval_tasks(["echo"], "builtin", "dev", limit=None)
    run = store.create_run("eval", {"test": "echo"})
    model_id = store.model_id(default_model.identity(), str(default_model.path))
    settings = EvalSettings.sized(concurrency=2, repeats=1, max_tokens=16, rounds=1)
    await Orchestrator(store, run.id, tserve, model_id, settings).run(tasks)
    episodes = store.episodes(run.id)
    assert len(episodes) == 2 and all(e.status == EpisodeStatus.COMPLETED for e in episodes)
    replies = [e.transcript[-1]["content"] for e in episodes]
    # The score came from what the container read back: it is 1 exactly when the reply holds the word.
    words = {store_task.id: store_task.task_key for store_task in store.tasks()}
    for episode, reply in zip(episodes, replies, strict=True):
        word = "banana" if words[episode.task_id] == "echo-0" else "river"
        assert episode.score == (1.0 if word in reply.lower() else 0.0)
    (aggregate,) = summarize(store, run.id, tasks, model_id)
    assert (aggregate.env, aggregate.episodes, aggregate.errors) == ("echo", 2, 0)
    assert aggregate.metrics == {"echoed": sum(e.score for e in episodes)}


def test_no_branch_on_an_environment_name_outside_envs() -> None:
    """The registry answers; code outside envs/ (tests and benches aside) never compares with a name."""
    done = subprocess.run(
        ["grep", "-rnE", r"""(==|!=) ?['"](os|db|coding)['"]|['"](os|db|coding)['"] ?(==|!=)""", "--include=*.py",
         "cycleqd", "db", "evolver", "serving", "sandboxes", "tui.py"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout == ""
    keyed = re.compile(r"""\{\s*['"](os|db|coding)['"]\s*:""")
    offenders = [
        f"{path}:{n}" for path in ROOT.glob("cycleqd/**/*.py") for n, line in enumerate(path.read_text().splitlines())
        if keyed.search(line)
    ]  # fmt: skip
    assert offenders == []
