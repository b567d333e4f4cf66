"""SDPA attention that, under continuous batching, attends one sequence at a time.

transformers' continuous batching packs every scheduled request into one sequence and, for SDPA (all a CPU has),
masks the cross-request pairs out of a single attention over the whole pack: each query is scored against the keys
of every request in the batch. Agent episodes carry long, growing contexts, so a round's prefill chunk of 2,048
tokens beside seven other episodes' 1,500-token contexts scores 2,048 × 12,000 pairs of which 1/8 count. Here the
pack is cut at the batch's cumulative sequence lengths and SDPA runs on each request's own block of queries, keys
and mask: the same masked-out pairs are skipped, never computed.

Registered over transformers' "sdpa" through its public `AttentionInterface` in the server process (`python -m
cycleqd.serving.per_sequence_attention serve ...`); outside continuous batching (no sequence lengths) it is
transformers' SDPA unchanged.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cycleqd.serving.heap_trim import start_heap_trimmer
from cycleqd.serving.in_vllm import batch_invariant
from cycleqd.serving.step_threads import with_step_threads_from_env
from cycleqd.serving.transformers_tools import install as install_tool_calling


def per_sequence_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    starts_q, starts_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if isinstance(starts_k, dict):  # one entry per layer type; with several, which one is this layer's is unknown
        starts_k = next(iter(starts_k.values())) if len(starts_k) == 1 else None
    if starts_q is None or starts_k is None or attention_mask is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds_q, bounds_k = starts_q.tolist(), starts_k.tolist()
    pieces = []
    for (q0, q1), (k0, k1) in zip(pairwise(bounds_q), pairwise(bounds_k), strict=True):
        if q1 > q0:
            block, causal = as_sdpa_flags(attention_mask[..., q0:q1, k0:k1])
            out, _ = sdpa_attention_forward(
                module, query[:, :, q0:q1], key[:, :, k0:k1], value[:, :, k0:k1], block,
                **({**kwargs, "is_causal": True} if causal else kwargs),
            )  # fmt: skip
            pieces.append(out)
    padding = query.shape[2] - bounds_q[-1]  # rows past the last sequence are padding: nothing reads them
    if padding:
        pieces.append(query.new_zeros(1, padding, query.shape[1], value.shape[-1]))
    return torch.cat(pieces, dim=1), None


def as_sdpa_flags(block: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
    """(None, True) for a square causal block (a prefill with nothing before it), so that SDPA runs its causal
    kernel instead of reading a mask (30 layers of a 1,600-token prefill: 2.0 s against 3.5 s); (the mask, False)
    otherwise. A lone decoding query keeps its mask too: with one, transformers folds the grouped query heads onto
    their key/value heads, which at 3,500 keys beats SDPA's own grouped path (15.5 against 19.4 ms a step)."""
    if block.shape[:2] == (1, 1) and block.shape[2] == block.shape[3] > 1:
        allowed = block[0, 0] if block.dtype == torch.bool else block[0, 0] == 0
        if torch.equal(allowed, torch.ones_like(allowed).tril()):
            return None, True
    return block, False


def serve() -> None:
    """`transformers serve` with this attention registered first (and, where the environment asks, with wide steps
    on more threads: serving.step_threads; with batch-invariant linear layers where it asks: in_vllm/
    batch_invariant.py), tool calling completed (serving.transformers_tools), its heap trimmed as it runs
    (serving.heap_trim); takes the same arguments."""
    if batch_invariant.requested():
        batch_invariant.install_in_torch()
    AttentionInterface.register("sdpa", with_step_threads_from_env(per_sequence_sdpa))
    install_tool_calling()
    start_heap_trimmer()
    from transformers.cli.transformers import main

    main()


if __name__ == "__main__":
    serve()
