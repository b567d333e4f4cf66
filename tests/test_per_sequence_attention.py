"""Per-sequence attention computes what transformers' packed SDPA computes over a continuous batch."""

from __future__ import annotations

from itertools import accumulate

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cycleqd.serving.per_sequence_attention import as_sdpa_flags, per_sequence_sdpa

HEADS, KV_HEADS, DIM = 4, 2, 8


class Attention(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS
    is_causal = True


def packed_batch(lengths_q: list[int], lengths_k: list[int], padding: int = 0) -> dict:
    """A batch as continuous batching hands it to attention: one pack of queries (each request's newest tokens),
    one of keys and values (each request's whole context), and the additive block-diagonal causal mask."""
    torch.manual_seed(0)
    total_q, total_k = sum(lengths_q) + padding, sum(lengths_k)
    mask = torch.full((1, 1, total_q, total_k), torch.finfo(torch.float32).min)
    q0 = k0 = 0
    for n_q, n_k in zip(lengths_q, lengths_k, strict=True):
        for row in range(n_q):  # query `row` is context position n_k - n_q + row: it sees keys up to there
            mask[0, 0, q0 + row, k0 : k0 + n_k - n_q + row + 1] = 0.0
        q0, k0 = q0 + n_q, k0 + n_k
    return {
        "query": torch.randn(1, HEADS, total_q, DIM),
        "key": torch.randn(1, KV_HEADS, total_k, DIM),
        "value": torch.randn(1, KV_HEADS, total_k, DIM),
        "attention_mask": mask,
        "cu_seq_lens_q": torch.tensor([0, *accumulate(lengths_q)]),
        "cu_seq_lens_k": {"full_attention": torch.tensor([0, *accumulate(lengths_k)])},
        "is_causal": False,
    }


def test_a_mixed_batch_of_prefill_and_decode_gets_the_packed_result() -> None:
    batch = packed_batch(lengths_q=[3, 1, 5, 1], lengths_k=[7, 4, 5, 9])
    packed, _ = sdpa_attention_forward(Attention(), **batch)
    ours, _ = per_sequence_sdpa(Attention(), **batch)
    assert ours.shape == packed.shape == (1, 10, HEADS, DIM)
    torch.testing.assert_close(ours, packed, rtol=1e-5, atol=1e-6)


def test_decode_only_batch_and_padding_rows() -> None:
    batch = packed_batch(lengths_q=[1, 1, 1], lengths_k=[6, 2, 11], padding=2)
    # Inside a layer the paged cache has already picked the layer type's lengths: a tensor, not a dict.
    batch["cu_seq_lens_k"] = batch["cu_seq_lens_k"]["full_attention"]
    packed, _ = sdpa_attention_forward(Attention(), **batch)
    ours, _ = per_sequence_sdpa(Attention(), **batch)
    torch.testing.assert_close(ours[:, :3], packed[:, :3], rtol=1e-5, atol=1e-6)
    assert ours.shape == packed.shape and not ours[:, 3:].any()  # padding rows: present, and nothing in them


def test_a_request_never_attends_to_another_requests_keys() -> None:
    batch = packed_batch(lengths_q=[2, 2], lengths_k=[4, 6])
    before, _ = per_sequence_sdpa(Attention(), **batch)
    batch["key"][:, :, 4:] = torch.randn(1, KV_HEADS, 6, DIM)  # the second request's keys change
    batch["value"][:, :, 4:] = torch.randn(1, KV_HEADS, 6, DIM)
    after, _ = per_sequence_sdpa(Attention(), **batch)
    torch.testing.assert_close(after[:, :2], before[:, :2])
    assert not torch.allclose(after[:, 2:], before[:, 2:])


def test_outside_continuous_batching_it_is_sdpa_unchanged() -> None:
    torch.manual_seed(1)
    query, key, value = (
        torch.randn(1, HEADS, 5, DIM),
        torch.randn(1, KV_HEADS, 5, DIM),
        torch.randn(1, KV_HEADS, 5, DIM),
    )
    expected, _ = sdpa_attention_forward(Attention(), query, key, value, None)
    ours, _ = per_sequence_sdpa(Attention(), query, key, value, None)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_only_square_causal_blocks_drop_their_mask() -> None:
    """SDPA's causal kernel is used only where its flag says what the mask says: a square causal block; a sliding
    window keeps its mask, and so does a lone decoding query (transformers' grouped-head folding needs one)."""
    low = torch.finfo(torch.float32).min
    causal = torch.zeros(1, 1, 4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), low)
    assert as_sdpa_flags(causal) == (None, True)
    windowed = causal.clone()
    windowed[0, 0, 3, 0] = low  # the last query no longer sees the first key
    assert as_sdpa_flags(windowed) == (windowed, False)
    row = torch.zeros(1, 1, 1, 6)
    assert as_sdpa_flags(row) == (row, False)
    chunk = causal[..., 1:, :]  # a chunk of 3 queries after 1 earlier token: not square
    assert as_sdpa_flags(chunk) == (chunk, False)
