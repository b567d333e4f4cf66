"""`eval --dtype`: validated with the request, stored with the run (a resume keeps it, a run stored before it
resumes with auto), and handed to the server manager that the run starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cycleqd
from cycleqd.db import open_store
from cycleqd.errors import BadOptionError
from cycleqd.eval import evaluate as evaluate_module
from cycleqd.eval import runtime as runtime_module
from cycleqd.eval_request import EvalRequest
from cycleqd.serving.model_ref import ExternalEndpoint
from tests.cli_in_process import Run
from tests.echo_environment import EchoEnvironment
from tests.memory_sandbox import MemoryStarter
from tests.scripted_model import ScriptedModel


def test_a_dtype_is_one_of_the_servers_and_is_stored_with_the_run() -> None:
    with pytest.raises(BadOptionError, match="--dtype float8: expected one of auto, bfloat16, float16, float32"):
        EvalRequest(tasks=("db",), dtype="float8")
    request = EvalRequest(tasks=("db",), dtype="bfloat16")
    assert request.snapshot()["dtype"] == "bfloat16"
    assert EvalRequest.from_snapshot(request.snapshot()).dtype == "bfloat16"
    older = {k: v for k, v in request.snapshot().items() if k != "dtype"}  # a run stored before --dtype
    assert EvalRequest.from_snapshot(older).dtype == "auto"


def test_an_endpoint_refuses_a_dtype_it_would_ignore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(BadOptionError, match="--dtype float16: expected auto with an endpoint"):
        EvalRequest(model="http://127.0.0.1:9/v1#m", tasks=("db",), dtype="float16")


def test_the_cli_refuses_an_unknown_dtype(run_cli: Run) -> None:
    code, _out, err = run_cli("eval", "--dtype", "float8", "--tasks", "db")
    assert code == 2 and "'float8' is not one of 'auto', 'bfloat16', 'float16', 'float32'" in err


def test_evaluate_starts_its_server_with_the_dtype_asked(
    monkeypatch: pytest.MonkeyPatch, echo_environment: EchoEnvironment, tmp_path: Path
) -> None:
    asked: list[dict[str, Any]] = []

    def manager_for(*_: object, **options: Any) -> ScriptedModel:
        asked.append(options)
        return ScriptedModel(lambda messages: messages[-1]["content"].split()[-1])

    monkeypatch.setattr(evaluate_module, "build_images", lambda *_: None)
    monkeypatch.setattr(evaluate_module, "docker_client", lambda: None)
    monkeypatch.setattr(evaluate_module, "resolve_model", lambda *_, **__: ExternalEndpoint("scripted://", "m"))
    monkeypatch.setattr(evaluate_module, "manager_for", manager_for)
    monkeypatch.setattr(runtime_module, "docker_starter", lambda *_: MemoryStarter())
    request = cycleqd.EvalRequest(tasks=("echo",), concurrency=1, max_tokens=8, rounds=1, dtype="float16")
    result = cycleqd.evaluate(request, db=tmp_path / "runs.db")
    assert [options["dtype"] for options in asked] == ["float16"]
    assert open_store(tmp_path / "runs.db").get_run(result.run_id).config["dtype"] == "float16"
