"""A vLLM worker extension (`--worker-extension-cls cycleqd_vllm_reload.TiedHeadReload`): an in-place reload that
also renews a tied output head. It runs inside vLLM's worker processes and imports nothing of cycleqd.

vLLM 0.32's in-place `reload_weights` skips `lm_head` when the config ties it to the input embeddings (the
checkpoint has no such tensor) and re-runs the kernels' weight processing only for the layers it loaded. On the CPU
that processing packs every matrix for its GEMM kernel, the head's included, so after a reload the head kept
computing with the packed embeddings of the checkpoint the process started on: the candidate served was a chimera
(measured: mean |Δ logprob| 0.50 nats per token against the same checkpoint freshly started, when only the
embeddings differ; 0 when only other layers do). Every candidate of an evolution changes the embeddings.

vLLM imports this module in each worker before it loads the model, which makes it the place to install the
batch-invariant linear layers of deterministic decoding (batch_invariant.py beside it) when the manager asks.
"""

from __future__ import annotations

import batch_invariant

if batch_invariant.requested():
    batch_invariant.install_in_vllm()


class TiedHeadReload:
    """Mixed into vLLM's worker class; called through `POST /collective_rpc`."""

    def reload_weights_and_tied_head(self, weights_path: str) -> bool:
        """`reload_weights(weights_path=…)`, then the head tied again to the new embeddings and its kernel weights
        processed anew. Returns whether the model ties its head. A tied head it cannot find raises, so the swap
        fails and the caller restarts the server on the candidate instead of serving a chimera."""
        self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        model = self.get_model()  # type: ignore[attr-defined]
        if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
            return False
        head = getattr(model, "lm_head", None)
        embeddings = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embeddings is None or not hasattr(head, "tie_weights"):
            raise RuntimeError(f"{type(model).__name__} ties its head, but no lm_head/model.embed_tokens to renew")
        head.tie_weights(embeddings)
        head.quant_method.process_weights_after_loading(head)
        return True
