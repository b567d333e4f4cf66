"""Linear layers whose result for one row does not depend on how many rows share the call: deterministic decoding.

A batching server runs each linear layer once per forward step over every token of every request in it, so the
row count M changes with what else is in flight. CPU GEMM libraries choose their kernel and blocking by M (oneDNN
bf16 builds one primitive per M, different beyond 32; MKL fp32 differs between M=1 and M≥2 and at further sizes;
vLLM's SGL kernel switches at M>4), so a request's greedy answer changed with its batch (4 of 16 tasks at
concurrency 1 against 8). Here the rows are padded to a multiple of `TILE_ROWS` and multiplied in tiles of that
many rows by one batched product: every call runs the one kernel shape, and a row's result is the same whatever M
and whichever tile it lands in (measured in fp32 and bf16, on 1 and 2 threads, with AMX and under AVX2; tiles of 8
and 32 rows were not invariant under AVX2). The price is the pad rows and bmm's speed instead of the library's best.

Torch only, no cycleqd import: it is loaded both by our transformers serve entry (serving.per_sequence_attention)
and inside vLLM's worker process (in_vllm/cycleqd_vllm_reload.py), where this folder is on the PYTHONPATH.
The server manager asks for it through `BATCH_INVARIANT_ENV` in the server's environment.
"""

import os
from collections.abc import Mapping

import torch

BATCH_INVARIANT_ENV = "CYCLEQD_BATCH_INVARIANT"
TILE_ROWS = 16


# A custom op, so that vLLM's torch.compile traces one opaque call instead of specialising the tiling on M.
@torch.library.custom_op("cycleqd::tiled_linear", mutates_args=())
def tiled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, each row computed alike whatever the other rows (see the module)."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features)
    count = rows.shape[0]
    pad = -count % TILE_ROWS
    if pad:
        rows = torch.cat([rows, rows.new_zeros(pad, in_features)])
    tiles = rows.shape[0] // TILE_ROWS
    out = torch.bmm(rows.view(tiles, TILE_ROWS, in_features), weight.t().expand(tiles, in_features, out_features))
    out = out.view(-1, out_features)[:count]
    out = out + bias if bias is not None else out.contiguous()
    return out.view(*x.shape[:-1], out_features)


@tiled_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(BATCH_INVARIANT_ENV) == "1"


def install_in_torch() -> None:
    """Every `torch.nn.Linear` of this process computes through `tiled_linear` (transformers' models, lm_head
    included, are made of them)."""

    def forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return tiled_linear(x, self.weight, self.bias)

    torch.nn.Linear.forward = forward  # type: ignore[method-assign]


def install_in_vllm() -> None:
    """vLLM's CPU linear layers (and its lm_head, through the same dispatch) compute through `tiled_linear`.
    vLLM 0.32 binds `layer.cpu_linear` in `dispatch_cpu_unquantized_gemm` (model_executor/layers/utils.py), which
    each layer's `process_weights_after_loading` imports at call time, after a reload too; it is replaced here for
    plain 2-D weights, which are then kept unpacked (the kernel is called with `layer.weight`)."""
    from vllm.model_executor.layers import utils

    dispatch = utils.dispatch_cpu_unquantized_gemm
    if getattr(dispatch, "batch_invariant", False):
        return

    def dispatch_tiled(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.is_meta or layer.weight.ndim != 2:
            dispatch(layer, remove_weight)
            return
        layer.cpu_linear = lambda x, weight, bias: tiled_linear(x, weight, bias)

    dispatch_tiled.batch_invariant = True  # type: ignore[attr-defined]
    utils.dispatch_cpu_unquantized_gemm = dispatch_tiled
