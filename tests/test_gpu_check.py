"""bench/gpu_check.py, the one prepared command for a GPU machine: its whole flow runs here on a toy shape and
the CPU (so the script cannot rot between GPU loans); on CUDA it runs where a GPU is present, else skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent


def run_check(out: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(out), "--work", str(out / "work"),
                    *args], check=True, env=env, cwd=ROOT, capture_output=True, timeout=900)  # fmt: skip
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_a_toy_shape_on_the_cpu(tmp_path: Path) -> None:
    figures = run_check(tmp_path, "--shapes", "tiny", "--device", "cpu")["shapes"]["tiny"]
    assert 0.5 < figures["svd_cache"]["bytes_per_expert_over_checkpoint"] <= 1.0
    assert figures["materialise_on_device"]["bytes_read_per_expert_over_checkpoint"] <= 2.0
    errors = figures["against_cpu_and_fp32"]["fp64_reference_relative_error"]
    assert len(errors) == 3 and max(errors.values()) < 1e-5
    assert figures["against_cpu_and_fp32"]["max_bf16_steps"] == 0.0  # CPU against CPU: the same bytes
    losses = figures["sft_step"]["losses"]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    generation = figures["greedy_generation"]
    assert len(generation["tokens"]) == 16 and generation["repeatable"] and generation["same_as_cpu_materialised"]


def test_shapes_are_llamas() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.gpu_check import SHAPES, tensor_shapes

    eight = tensor_shapes(SHAPES["8b"])
    assert sum(torch.Size(s).numel() for s in eight.values()) == 8_030_261_248  # Llama-3-8B's parameter count
    one = tensor_shapes(SHAPES["1b"])
    assert sum(torch.Size(s).numel() for s in one.values()) == 1_235_814_400  # Llama-3.2-1B's (tied head)


def test_a_machine_without_cuda_is_told_so(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "no CUDA device" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: bench/gpu_check.py's CUDA path")
def test_the_gpu_check_on_cuda_matches_the_cpu(tmp_path: Path) -> None:
    figures = run_check(tmp_path, "--shapes", "1b", "--budget-s", "400")["shapes"]["1b"]
    assert figures["against_cpu_and_fp32"]["max_bf16_steps"] <= 1.0  # at most one bf16 rounding step apart
    assert max(figures["against_cpu_and_fp32"]["fp64_reference_relative_error"].values()) < 1e-5
    assert figures["greedy_generation"]["repeatable"]
