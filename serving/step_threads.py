"""Torch's intra-op threads chosen per forward step of the batching server: wide steps on more cores.

A decode step is a few query tokens through many small kernels, where a second thread mostly waits at OpenMP's
barrier (on a loaded 2-core machine, descheduled: serving.transformers_serve keeps one thread). A step carrying a
prefill chunk is hundreds of tokens through large matrix products, which split well: on the 2-core AVX2 machine a
1,600-token SmolLM2 forward ran 1.6-1.9x faster on two threads than on one. Agent episodes re-prefill a grown
conversation every round, so those steps are a large share of a job. The choice is made at the first layer's
attention (the one place a server lets us in, transformers' `AttentionInterface`), from the step's query length,
and holds for the rest of the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

WIDE_STEP_THREADS_ENV = "CYCLEQD_WIDE_STEP_THREADS"
# A step with at least this many query tokens carries prefill; pure decode steps have one per request in flight.
WIDE_STEP_TOKENS = 64

Attention = Callable[..., tuple[torch.Tensor, Any]]


def wide_threads_here() -> int | None:
    """Every core this process may run on, or None where that is one (nothing to widen to)."""
    cores = len(os.sched_getaffinity(0))
    return cores if cores > 1 else None


def step_threads(query_tokens: int, wide: int, narrow: int) -> int:
    return wide if query_tokens >= WIDE_STEP_TOKENS else narrow


def with_step_threads(attention: Attention, wide: int, narrow: int) -> Attention:
    """`attention`, setting the threads for the rest of each step when it runs in a step's first layer."""

    def attention_choosing_threads(module: torch.nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if getattr(module, "layer_idx", None) == 0:
            threads = step_threads(query.shape[2], wide, narrow)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        return attention(module, query, *args, **kwargs)

    return attention_choosing_threads


def with_step_threads_from_env(attention: Attention) -> Attention:
    """`attention` as is, or choosing threads per step when the server's environment names a wide thread count
    (the process's starting thread count is the narrow one)."""
    wide = os.environ.get(WIDE_STEP_THREADS_ENV)
    if not wide:
        return attention
    return with_step_threads(attention, int(wide), torch.get_num_threads())
