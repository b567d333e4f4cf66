"""Model references and checkpoint identities: what users type, and the errors they get."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cycleqd.serving.errors import ModelRefError
from cycleqd.serving.identity import checkpoint_identity
from cycleqd.serving.model_ref import ExternalEndpoint, HubModel, LocalCheckpoint, parse_model_ref


def make_checkpoint(folder: Path, *, config: object = None, weights: bool = True, tokenizer: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


GOOD_CONFIG = {"architectures": ["LlamaForCausalLM"]}


def test_folder_is_a_local_checkpoint(tmp_path: Path) -> None:
    ref = parse_model_ref(str(make_checkpoint(tmp_path / "ck", config=GOOD_CONFIG)))
    assert ref == LocalCheckpoint((tmp_path / "ck").resolve())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": None}, "config.json: missing"),
        ({"config": "{not json"}, "config.json: not valid JSON"),
        ({"config": {"model_type": "llama"}}, "field 'architectures' is missing"),
        ({"config": GOOD_CONFIG, "weights": False}, "no *.safetensors weights"),
        ({"config": GOOD_CONFIG, "tokenizer": False}, "no tokenizer"),
    ],
)
def test_broken_checkpoints_name_file_and_field(tmp_path: Path, kwargs: dict, message: str) -> None:
    folder = make_checkpoint(tmp_path / "ck", **kwargs)
    with pytest.raises(ModelRefError) as error:
        parse_model_ref(str(folder))
    assert message in str(error.value) and str(folder) in str(error.value)


def test_endpoint_and_hub_references() -> None:
    assert parse_model_ref("http://127.0.0.1:8000/v1/#my-model", key_env="MY_KEY") == ExternalEndpoint(
        "http://127.0.0.1:8000/v1", "my-model", "MY_KEY"
    )
    assert parse_model_ref("hf/meta-llama/Meta-Llama-3-8B-Instruct") == HubModel("meta-llama/Meta-Llama-3-8B-Instruct")
    assert parse_model_ref("meta-llama/Llama-3.1-8B", allow_download=True) == HubModel("meta-llama/Llama-3.1-8B")
    with pytest.raises(ModelRefError, match="model name after '#'"):
        parse_model_ref("http://127.0.0.1:8000/v1")
    with pytest.raises(ModelRefError, match="expected hf/ORG/NAME"):
        parse_model_ref("hf/just-a-name")
    with pytest.raises(ModelRefError, match="neither an existing checkpoint folder"):
        parse_model_ref("not a model")
    with pytest.raises(ModelRefError, match="not a folder"):
        parse_model_ref("./missing-folder")


def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    assert ExternalEndpoint("http://x/v1", "m", "MY_KEY").api_key() == "sk-test"


def test_identity_follows_content_and_is_cached(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "a", config=GOOD_CONFIG)
    first = checkpoint_identity(folder)
    copy = tmp_path / "b"
    shutil.copytree(folder, copy)
    assert checkpoint_identity(copy) == first  # content, not location
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert checkpoint_identity(copy) != first
    (folder / "notes.md").write_text("not part of the model")
    assert checkpoint_identity(folder) == first
    assert json.loads((folder / ".cycleqd-identity.json").read_text())["identity"] == first


def test_identity_leaves_out_the_transformers_version_that_wrote_the_configs(tmp_path: Path) -> None:
    def converted(name: str, version: str, **changes: object) -> Path:
        folder = make_checkpoint(tmp_path / name, config={**GOOD_CONFIG, **changes, "transformers_version": version})
        (folder / "generation_config.json").write_text(
            json.dumps({"transformers_version": version, "do_sample": False})
        )
        return folder

    older = converted("older", "4.57.1")
    # Another version writes the same fields in another order and layout.
    newer = converted("newer", "5.24.0")
    (newer / "config.json").write_text(
        json.dumps(dict(reversed(json.loads((newer / "config.json").read_text()).items())), indent=4)
    )
    assert checkpoint_identity(newer) == checkpoint_identity(older)
    assert checkpoint_identity(converted("other", "4.57.1", rope_theta=1.0)) != checkpoint_identity(older)


def test_identity_cached_under_an_older_scheme_is_computed_again(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "a", config={**GOOD_CONFIG, "transformers_version": "4.57.1"})
    fresh = checkpoint_identity(folder)
    cache = folder / ".cycleqd-identity.json"
    stale = json.loads(cache.read_text())
    del stale["scheme"]
    stale["identity"], stale["files"]["config.json"] = "sha256:old", "0" * 64
    cache.write_text(json.dumps(stale))
    assert checkpoint_identity(folder) == fresh


def test_default_checkpoint_is_a_complete_bf16_checkpoint(default_model: LocalCheckpoint) -> None:
    from safetensors import safe_open

    config = json.loads((default_model.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (default_model.path / "chat_template.jinja").read_text().count("<|im_start|>") >= 1
    with safe_open(default_model.path / "model.safetensors", framework="pt") as weights:
        first = next(iter(weights.keys()))
        assert str(weights.get_slice(first).get_dtype()) == "BF16"
        n_params = sum(_numel(weights.get_slice(k).get_shape()) for k in weights.keys())
    assert 130e6 < n_params < 140e6  # SmolLM2-135M


def _numel(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def test_default_checkpoint_is_converted_once(default_model: LocalCheckpoint) -> None:
    from cycleqd.serving.default_model import default_checkpoint

    mtime = (default_model.path / "model.safetensors").stat().st_mtime_ns
    assert default_checkpoint() == default_model
    assert (default_model.path / "model.safetensors").stat().st_mtime_ns == mtime


def test_an_endpoints_client_lets_every_episode_of_a_run_wait_on_a_reply() -> None:
    from cycleqd.serving.resolve import manager_for

    endpoint = ExternalEndpoint("http://127.0.0.1:9/v1", "m")
    assert manager_for(endpoint, episodes_at_once=64).client_settings.max_concurrency == 64
    assert manager_for(endpoint, episodes_at_once=2).client_settings.max_concurrency == 8  # the client's floor


def test_a_relative_checkpoint_folder_is_stored_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cycleqd.errors import ResumeConflictError
    from cycleqd.eval_request import EvalRequest

    make_checkpoint(tmp_path / "experts" / "db", config=GOOD_CONFIG)
    monkeypatch.chdir(tmp_path)
    where = str(tmp_path / "experts" / "db")
    request = EvalRequest(model="experts/db", tasks=("db",))
    # stored as typed, `eval --resume` from another folder did not find it
    assert request.model == where and EvalRequest.from_snapshot(request.snapshot()).model == where
    assert EvalRequest(model="vllm/experts/db").model == f"vllm/{where}"
    assert EvalRequest(model="default").model == "default" and EvalRequest(model="hf/org/name").model == "hf/org/name"
    # the same folder, typed either way, is the same option on resume; another folder is not
    request.resumed_with({"model": where}, "r1")
    request.resumed_with({"model": "./experts/db"}, "r1")
    make_checkpoint(tmp_path / "experts" / "os", config=GOOD_CONFIG)
    with pytest.raises(ResumeConflictError, match="experts/os conflicts with run r1"):
        request.resumed_with({"model": "experts/os"}, "r1")


def test_auto_serves_long_jobs_with_vllm_on_a_cpu_that_runs_it_and_short_ones_with_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cycleqd.serving import resolve
    from cycleqd.serving.resolve import VLLM_CPU_MIN_EPISODES, engine_for

    monkeypatch.setattr(resolve, "gpu_available", lambda: False)
    monkeypatch.setattr(resolve, "cpu_vllm_available", lambda: True)
    assert engine_for("auto", episodes=VLLM_CPU_MIN_EPISODES - 1) == "transformers"
    assert engine_for("auto", episodes=VLLM_CPU_MIN_EPISODES) == "vllm"
    assert engine_for("auto", episodes=None) == "vllm"  # a whole split: a long job
    assert engine_for("transformers", episodes=None) == "transformers" and engine_for("vllm", episodes=0) == "vllm"
    monkeypatch.setattr(resolve, "cpu_vllm_available", lambda: False)
    assert engine_for("auto", episodes=None) == "transformers"  # the fallback where vLLM cannot run


def test_an_evolutions_size_chooses_its_engine_and_its_config_may_name_one(tmp_path: Path) -> None:
    from cycleqd.evolver.config import ConfigError, parse_config

    for name in ("os", "db"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    tasks = [{"name": n, "env": n, "expert": str(tmp_path / n), "limit": 4} for n in ("os", "db")]
    config = parse_config({"base": "default", "tasks": tasks, "generations": 6}, "mine.yaml", tmp_path)
    assert config.server == "auto" and config.planned_episodes() == (2 + 6) * 8
    assert parse_config({"base": "default", "tasks": tasks, "server": "vllm"}, "mine.yaml", tmp_path).server == "vllm"
    unlimited = [{**tasks[0], "limit": None}, tasks[1]]
    assert parse_config({"base": "default", "tasks": unlimited}, "mine.yaml", tmp_path).planned_episodes() is None
    with pytest.raises(ConfigError, match="server"):
        parse_config({"base": "default", "tasks": tasks, "server": "sglang"}, "mine.yaml", tmp_path)
