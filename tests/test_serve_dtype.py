"""A dtype asked for (`eval --dtype`) reaches whichever server is started, on its command line and in the decoding
description a run keeps; `auto` leaves each engine's choice for its device as it was. No server is started: the
processes are built, never run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cycleqd.serving import vllm_serve
from cycleqd.serving.cpu_dtype import cpu_serving_dtype
from cycleqd.serving.model_ref import LocalCheckpoint
from cycleqd.serving.resolve import DTYPES, manager_for
from cycleqd.serving.transformers_serve import SERVE_PRESETS, TransformersServeManager
from cycleqd.serving.vllm_launch import Device, VLLMLaunch

GPU = VLLMLaunch(Device.GPU, (sys.executable, "-m", "vllm.entrypoints.cli.main"))
CPU = VLLMLaunch(Device.CPU, (sys.executable, "entry.py"))


def dtypes_in(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--dtype"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> LocalCheckpoint:
    return LocalCheckpoint(tmp_path / "model")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_transformers_serve_is_started_with_the_dtype_asked(checkpoint: LocalCheckpoint, dtype: str) -> None:
    manager = manager_for(checkpoint, server="transformers", dtype=dtype)
    assert isinstance(manager, TransformersServeManager)
    assert dtypes_in(manager._make_process().argv) == [dtype]
    assert f"--dtype {dtype}" in manager.decoding()
    # only the dtype changes: the batching and threads of the default preset stay
    assert manager.options.continuous_batching and manager.options.num_blocks == SERVE_PRESETS["default"].num_blocks


def test_auto_keeps_transformers_serve_s_choice_for_the_device(checkpoint: LocalCheckpoint) -> None:
    manager = manager_for(checkpoint, server="transformers", dtype="auto")
    assert manager.options == TransformersServeManager(device=manager.device).options  # as before --dtype
    expected = cpu_serving_dtype() if manager.device == "cpu" else "auto"
    assert dtypes_in(manager._make_process().argv) == [expected]


@pytest.mark.parametrize(("launch", "dtype", "expected"), [
    (GPU, "bfloat16", ["bfloat16"]), (GPU, "auto", []),  # auto on a GPU: vLLM's own (the checkpoint's)
    (CPU, "float16", ["float16"]), (CPU, "auto", [cpu_serving_dtype()]),  # auto on a CPU: its fast one
])  # fmt: skip
def test_vllm_is_started_with_the_dtype_asked(
    checkpoint: LocalCheckpoint, monkeypatch: pytest.MonkeyPatch, launch: VLLMLaunch, dtype: str, expected: list[str]
) -> None:
    monkeypatch.setattr(vllm_serve, "find_vllm", lambda want_gpu: launch)
    manager = manager_for(checkpoint, server="vllm", dtype=dtype)
    assert isinstance(manager, vllm_serve.VLLMManager)
    manager._model_path = str(checkpoint.path)
    assert dtypes_in(manager._make_process().argv) == expected
    assert manager.decoding().endswith(f"--dtype {expected[0]}" if expected else "--device cuda")


def test_the_dtypes_offered_are_torch_s_names() -> None:
    torch = pytest.importorskip("torch")
    assert DTYPES[0] == "auto" and all(isinstance(getattr(torch, name), torch.dtype) for name in DTYPES[1:])
