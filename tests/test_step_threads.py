"""The batching server's steps that carry prefill run on the wide thread count, decode steps on the narrow one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from cycleqd.serving.step_threads import WIDE_STEP_THREADS_ENV, WIDE_STEP_TOKENS, with_step_threads_from_env
from cycleqd.serving.transformers_serve import SERVE_PRESETS


class Layer(torch.nn.Module):
    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx


def threads_seen(module: torch.nn.Module, query: torch.Tensor, *_: object, **__: object) -> tuple[torch.Tensor, int]:
    """An attention that reports the threads it ran under, and returns its query."""
    return query, torch.get_num_threads()


def step(tokens: int) -> torch.Tensor:
    return torch.zeros(1, 2, tokens, 4)


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv(WIDE_STEP_THREADS_ENV, "2")
    yield
    torch.set_num_threads(before)


def test_a_prefill_step_widens_and_the_next_decode_step_narrows(one_thread: None) -> None:
    attention = with_step_threads_from_env(threads_seen)
    assert attention(Layer(0), step(WIDE_STEP_TOKENS))[1] == 2
    assert attention(Layer(5), step(1))[1] == 2  # a later layer of the same step keeps the step's choice
    assert attention(Layer(0), step(8))[1] == 1  # eight requests decoding: narrow again
    assert attention(Layer(0), step(WIDE_STEP_TOKENS - 1))[1] == 1
    output, _ = attention(Layer(0), step(3))
    assert output.shape == (1, 2, 3, 4)  # the attention's own result passes through


def test_without_the_environment_the_attention_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WIDE_STEP_THREADS_ENV, raising=False)
    assert with_step_threads_from_env(threads_seen) is threads_seen


def test_only_the_per_sequence_server_is_told_to_widen() -> None:
    wide = SERVE_PRESETS["cb-fp32-t1-wide2"]
    # Threads that sleep at OpenMP's barriers: spinning ones collapse a loaded machine (serving.transformers_serve).
    assert wide.env() == {"OMP_NUM_THREADS": "1", WIDE_STEP_THREADS_ENV: "2", "OMP_WAIT_POLICY": "PASSIVE"}
    assert "prefill steps on 2 threads" in wide.describe()
    packed = SERVE_PRESETS["cb-fp32-t1-packed"]
    assert dataclasses.replace(packed, wide_step_threads=2).env() == {"OMP_NUM_THREADS": "1"}
