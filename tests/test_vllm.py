"""vLLM on a GPU: in-place swaps, restarts, and the fingerprint check that catches a stale model.

These need an NVIDIA GPU and vLLM (`pip install 'cycleqd[vllm]'`, which pins the tested version); elsewhere they
skip, saying so. Every branch of the manager's protocol is tested everywhere, against a server that answers as
vLLM's source says (tests/test_vllm_protocol.py).
"""

from __future__ import annotations

import importlib.util
import time

import pytest
from cycleqd.serving.resolve import gpu_available

needs_gpu = pytest.mark.skipif(
    not (gpu_available() and importlib.util.find_spec("vllm")),
    reason="vLLM tests need an NVIDIA GPU and `pip install 'cycleqd[vllm]'`; this machine has "
    + ("no vLLM" if gpu_available() else "no GPU"),
)


@needs_gpu
@pytest.mark.gpu
async def test_in_place_swap_is_verified_and_faster_than_restart(default_model, perturbed_model) -> None:  # noqa: ANN001
    from cycleqd.serving.vllm_serve import VLLMManager

    manager = VLLMManager(gpu_memory_utilization=0.3, max_model_len=2048)
    try:
        started = time.monotonic()
        first = await manager.serve(default_model)
        restart_s = time.monotonic() - started
        question = [{"role": "user", "content": "What is the capital of France?"}]
        original = await manager.chat(question, max_tokens=16)
        second = await manager.serve(perturbed_model)
        assert manager.swap_method == "reload_in_place" and manager.last_method == "reload_in_place"
        swap_s = manager.last_swap_s
        changed = await manager.chat(question, max_tokens=16)
        assert second.identity != first.identity and changed.text != original.text
        await manager.serve(default_model)
        assert (await manager.chat(question, max_tokens=16)).text == original.text
        assert not manager.fallbacks, manager.fallbacks
        print(f"vLLM restart {restart_s:.1f} s, in-place swap ({manager.swap_method}) {swap_s:.1f} s")
        assert swap_s < restart_s
    finally:
        await manager.stop()


@needs_gpu
@pytest.mark.gpu
async def test_a_swap_that_did_not_happen_is_caught(
    default_model, perturbed_model, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    from cycleqd.serving.vllm_serve import VLLMManager

    manager = VLLMManager(gpu_memory_utilization=0.3, max_model_len=2048)
    try:
        await manager.serve(default_model)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        original = await manager.chat(question, max_tokens=16)

        async def swap_that_does_nothing(path) -> str:  # noqa: ANN001 - the failure under test: a stale server
            return "reload_in_place"

        monkeypatch.setattr(manager, "_swap_in_place", swap_that_does_nothing)
        await manager.serve(perturbed_model)
        assert "not verified" in manager.fallbacks[0] and manager.last_method == "restart"
        assert (await manager.chat(question, max_tokens=16)).text != original.text
    finally:
        await manager.stop()
