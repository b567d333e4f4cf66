"""Deterministic decoding (`eval --deterministic`): a greedy answer does not depend on what shares its batch.

The tiled linear alone (serving/in_vllm/batch_invariant.py), then both real servers in that mode, answering the same
prompts one at a time and all at once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cycleqd.serving.in_vllm.batch_invariant import TILE_ROWS, tiled_linear
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import LocalCheckpoint

# SmolLM2-135M's linear layers as (out, in): q/o, k/v, gate/up, down, lm_head.
SMOLLM2_LINEARS = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]
NEW_TOKENS = 24  # enough for greedy paths to part where the batch changes them; each token is a step of every prompt


def prompts(count: int = 8) -> list[list[dict[str, str]]]:
    """Distinct chats of ~100 to ~300 tokens each: long enough that a step carries more than 32 rows, short enough
    that all of them together fit one step's token budget (2,048), so no prompt is cut into chunks."""
    draw = random.Random(39)
    words = {
        "animal": ["fox", "heron", "otter", "lynx", "badger", "crane", "moth", "seal"],
        "city": ["Lyon", "Porto", "Quito", "Oslo", "Hanoi", "Perth", "Cork", "Riga"],
        "food": ["figs", "rice", "clams", "barley", "plums", "beetles", "kelp", "acorns"],
    }
    chats = []
    for i in range(count):
        notes = " ".join(
            f"Note {k}: the {draw.choice(words['animal'])} seen near {draw.choice(words['city'])} ate "
            f"{draw.choice(words['food'])} on day {draw.randint(1, 90)}."
            for k in range(5 + 2 * i)
        )
        ask = "Which animal appears most often, and where? Explain briefly."
        chats.append([{"role": "user", "content": f"Field notes, set {i}. {notes}\n{ask}"}])
    return chats


async def answers_alone_and_together(manager: ServerManager) -> tuple[list[str], list[str]]:
    chats = prompts()
    alone = [(await manager.chat(chat, max_tokens=NEW_TOKENS)).text for chat in chats]
    together = await asyncio.gather(*(manager.chat(chat, max_tokens=NEW_TOKENS) for chat in chats))
    return alone, [reply.text for reply in together]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SMOLLM2_LINEARS, ids=lambda shape: f"{shape[0]}x{shape[1]}")
def test_tiled_linear_gives_a_row_the_same_result_whatever_shares_the_call(
    shape: tuple[int, int], dtype: torch.dtype
) -> None:
    out_features, in_features = shape
    generator = torch.Generator().manual_seed(out_features + in_features)
    weight = (torch.randn(out_features, in_features, generator=generator) / in_features**0.5).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype)
    row = torch.randn(1, in_features, generator=generator).to(dtype)
    alone = tiled_linear(row, weight, bias)[0]
    # The head is 85x the others' size: every tile boundary and a few counts between them, not all 70.
    counts = range(1, 71) if out_features < 10_000 else (1, 2, TILE_ROWS - 1, TILE_ROWS, TILE_ROWS + 1, 33, 70)
    for count in counts:
        rows = torch.randn(count, in_features, generator=generator).to(dtype)
        for position in {0, count // 2, count - 1}:
            rows[position] = row[0]
            out = tiled_linear(rows, weight, bias)
            assert torch.equal(out[position], alone), (count, position)
        tolerance = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
        torch.testing.assert_close(out, F.linear(rows, weight, bias), atol=tolerance, rtol=tolerance)


def test_tiled_linear_keeps_leading_dimensions() -> None:
    x, weight = torch.randn(2, 3, 8), torch.randn(5, 8)
    torch.testing.assert_close(tiled_linear(x, weight), F.linear(x, weight))


def test_transformers_serve_in_the_mode_says_so_in_its_decoding(tmp_path: Path) -> None:
    """Its server in the mode answered 8 chats alike alone and together, but so did it without the mode (0 of 8
    differed): that comparison could not fail, so it is not kept as a test; what a run stores is."""
    from cycleqd.serving.transformers_serve import TransformersServeManager, default_options

    manager = TransformersServeManager(options=default_options("cpu", deterministic=True), log_dir=tmp_path)
    assert manager.decoding().endswith("deterministic")
    assert (
        not TransformersServeManager(options=default_options("cpu"), log_dir=tmp_path)
        .decoding()
        .endswith("deterministic")
    )


async def test_vllm_answers_alike_alone_and_together(vllm_server, default_model: LocalCheckpoint) -> None:  # noqa: ANN001
    await vllm_server.serve(default_model)
    assert vllm_server.decoding().endswith("deterministic")
    alone, together = await answers_alone_and_together(vllm_server)
    assert together == alone
