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
