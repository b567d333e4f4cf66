"""A mistake in what an API caller asks of `cycleqd.EvalRequest` or `cycleqd.evaluate` is a `cycleqd.UserError`, as
the README promises, whichever layer found it; and `tasks` takes a comma-separated string as `--tasks` does."""

from __future__ import annotations

from pathlib import Path

import pytest

import cycleqd
from cycleqd.envs.errors import UnknownEnvironmentError
from cycleqd.serving.errors import ModelRefError


def test_a_comma_separated_string_of_environments_is_split_on_its_commas() -> None:
    assert cycleqd.EvalRequest(tasks="db").tasks == ("db",)
    assert cycleqd.EvalRequest(tasks="db, os").tasks == ("db", "os")
    assert cycleqd.EvalRequest(tasks=("db", "os")).tasks == ("db", "os")
    assert cycleqd.EvalRequest(tasks=("db",), task_ids="a,b").task_ids == ("a", "b")


def test_an_unknown_environment_is_a_user_error() -> None:
    with pytest.raises(cycleqd.UserError, match="^unknown environment 'web': choose from os, db, coding$") as error:
        cycleqd.EvalRequest(tasks="web")
    assert isinstance(error.value.__cause__, UnknownEnvironmentError)  # what the layer below found, kept


def test_a_model_that_is_not_there_is_a_user_error_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    with pytest.raises(cycleqd.UserError, match="^'nosuch/dir' is not a checkpoint folder here; ") as error:
        cycleqd.evaluate(cycleqd.EvalRequest(model="nosuch/dir", tasks="db"), db=db)
    assert isinstance(error.value.__cause__, ModelRefError)
    with pytest.raises(cycleqd.UserError, match="names the vllm server, but --server transformers was given"):
        cycleqd.EvalRequest(model="vllm/default", server="transformers")
    assert list(tmp_path.iterdir()) == []


def test_an_episode_time_limit_is_seconds_above_0_and_a_resume_keeps_the_one_stored() -> None:
    from cycleqd.errors import ResumeConflictError

    refused = r"^--episode-timeout \S+: expected seconds above 0, at most 604,800$"
    for bad in (0, -5, float("nan"), float("inf"), "600", 10**7):
        with pytest.raises(cycleqd.UserError, match=refused):
            cycleqd.EvalRequest(tasks="db", episode_timeout=bad)
    stored = cycleqd.EvalRequest(tasks="db", episode_timeout=600)
    assert stored.settings().episode.time_limit_s == 600.0 and stored.snapshot()["episode_timeout"] == 600
    assert stored.resumed_with({"episode_timeout": 600.0}, "r1") is stored
    with pytest.raises(ResumeConflictError, match="^--episode-timeout 900.0 conflicts with run r1, which was started "
                                                  "with --episode-timeout 600;"):  # fmt: skip
        stored.resumed_with({"episode_timeout": 900.0}, "r1")
