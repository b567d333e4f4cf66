"""The embedded CPU default for real: `transformers serve` with the SmolLM2 checkpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys

import pytest

from cycleqd.serving.client import ChatClient, ClientSettings, ServedModel, require_model
from cycleqd.serving.errors import EndpointError, ModelRefError, ServerDiedError, UnknownModelError
from cycleqd.serving.heap_trim import TRIM_PERIOD_S
from cycleqd.serving.model_ref import HubModel, LocalCheckpoint
from cycleqd.serving.server_process import free_port
from cycleqd.serving.transformers_serve import SERVE_PRESETS, TransformersServeManager

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


async def test_chat_is_answered_and_stamped(tserve: TransformersServeManager, default_model: LocalCheckpoint) -> None:
    await tserve.serve(default_model)
    reply = await tserve.chat(QUESTION, max_tokens=24)
    assert "Paris" in reply.text
    assert reply.identity == default_model.identity() and reply.identity.startswith("sha256:")
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens <= 24
    assert reply.latency_s > 0 and reply.finish_reason in ("stop", "length")


async def test_greedy_is_deterministic_and_stop_strings_cut(tserve: TransformersServeManager, default_model) -> None:  # noqa: ANN001
    await tserve.serve(default_model)
    first = await tserve.chat(QUESTION, max_tokens=24)
    assert (await tserve.chat(QUESTION, max_tokens=24)).text == first.text
    words = first.text.split()
    cut = await tserve.chat(QUESTION, max_tokens=24, stop=[words[2]])
    assert words[2] not in cut.text and len(cut.text) < len(first.text)


@pytest.mark.slow
async def test_swap_by_path_changes_output_and_identity(
    tserve: TransformersServeManager, default_model: LocalCheckpoint, perturbed_model: LocalCheckpoint
) -> None:
    await tserve.serve(default_model)
    original = await tserve.chat(QUESTION, max_tokens=16)
    await tserve.serve(perturbed_model)
    changed = await tserve.chat(QUESTION, max_tokens=16)
    assert changed.identity == perturbed_model.identity() != original.identity
    assert changed.text != original.text
    await tserve.serve(default_model)
    assert (await tserve.chat(QUESTION, max_tokens=16)).text == original.text


@pytest.mark.slow
async def test_ten_swaps_keep_memory_flat(
    tserve: TransformersServeManager, default_model: LocalCheckpoint, perturbed_model: LocalCheckpoint
) -> None:
    await tserve.serve(default_model)
    await tserve.chat(QUESTION, max_tokens=4)
    one_model = tserve.memory_bytes()
    for i in range(10):  # a leak of a tenth of a model per swap would end 2× above one model, past the 1.3× bound
        await tserve.serve(perturbed_model if i % 2 == 0 else default_model)
    await tserve.chat(QUESTION, max_tokens=4)
    await asyncio.sleep(2 * TRIM_PERIOD_S)  # freed pages go back within a trim period (serving.heap_trim)
    after = tserve.memory_bytes()
    assert one_model > 200 << 20  # the measurement sees the model
    assert after <= 1.3 * one_model, (
        f"{one_model / 2**20:.0f} MiB with one model, {after / 2**20:.0f} MiB after 10 swaps"
    )


@pytest.mark.slow
async def test_server_killed_mid_request_is_a_clear_error_and_comes_back(default_model: LocalCheckpoint) -> None:
    async with TransformersServeManager(client_settings=ClientSettings(retries=1, backoff_s=0.1)) as manager:
        await manager.serve(default_model)
        long_answer = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
        request = asyncio.create_task(manager.chat(long_answer, max_tokens=500))
        await asyncio.sleep(1.5)
        assert not request.done()
        assert manager.process is not None and manager.process.pid is not None
        os.killpg(manager.process.pid, signal.SIGKILL)
        with pytest.raises(ServerDiedError, match="died during a request and was restarted"):
            await request
        assert manager.restarts == 1 and manager.process.alive
        reply = await manager.chat(QUESTION, max_tokens=24)
        assert "Paris" in reply.text and reply.identity == default_model.identity()


async def test_unloadable_model_is_a_clear_error(tserve: TransformersServeManager, default_model) -> None:  # noqa: ANN001
    with pytest.raises(ModelRefError, match="could not load nobody/no-such-model"):
        await tserve.serve(HubModel("nobody/no-such-model"))
    assert tserve.served is None  # nothing half-swapped is served
    await tserve.serve(default_model)


async def test_unknown_model_name_is_a_clear_error(tserve: TransformersServeManager) -> None:
    with pytest.raises(UnknownModelError, match="does not serve model 'gpt-17'.*smollm2"):
        await require_model(tserve.client, "gpt-17")


async def test_wrong_url_is_a_clear_error() -> None:
    async with ChatClient(
        f"http://127.0.0.1:{free_port()}/v1", settings=ClientSettings(retries=1, backoff_s=0.01)
    ) as client:
        with pytest.raises(EndpointError, match="cannot reach .* after 2 attempts"):
            await client.chat(ServedModel("m", "x"), QUESTION)


async def test_a_server_that_is_not_openai_compatible_is_named(tmp_path) -> None:  # noqa: ANN001
    port = free_port()
    (tmp_path / "index.html").write_text("<html>hello</html>")
    web = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with ChatClient(f"http://127.0.0.1:{port}", settings=ClientSettings(retries=8, backoff_s=0.1)) as client:
            with pytest.raises(EndpointError, match="OpenAI-compatible"):
                await client.chat(ServedModel("m", "x"), QUESTION)
            with pytest.raises(EndpointError, match="OpenAI-compatible"):
                await client.list_models()
    finally:
        web.terminate()
        await web.wait()


async def test_an_external_endpoint_is_used_as_is(tserve: TransformersServeManager, default_model) -> None:  # noqa: ANN001
    from cycleqd.serving.external import ExternalManager
    from cycleqd.serving.model_ref import parse_model_ref

    await tserve.serve(default_model)
    ref = parse_model_ref(f"{tserve.base_url}#{default_model.path}")
    async with ExternalManager(ref) as external:
        served = await external.serve(ref)
        reply = await external.chat(QUESTION, max_tokens=24)
    assert served.identity == f"endpoint:{tserve.base_url}#{default_model.path}" == reply.identity
    assert "Paris" in reply.text
    missing = parse_model_ref(f"{tserve.base_url}#not-served")
    with pytest.raises(UnknownModelError, match="not-served"):
        async with ExternalManager(missing):
            pass


@pytest.mark.slow
def test_cli_chat_answers_with_the_default_model(default_model: LocalCheckpoint) -> None:
    from tests.cli_process import cycleqd

    done = cycleqd("chat", "What is the capital of France? Answer in one sentence.", "--max-tokens", "24", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and default_model.identity() in " ".join(done.stderr.split())


OS_PROBLEMS = [
    "How many files are in /etc?",
    "What is the name of the current user?",
    "Which shell does the user nobody have?",
]


async def test_batched_serving_answers_as_one_request_at_a_time(default_model: LocalCheckpoint) -> None:
    """Greedy transcripts do not depend on batching: the default (continuous batching) answers OS episodes' first
    prompts, all at once, exactly as the same server settings without batching answer them one by one."""
    from cycleqd.envs.os.prompt import first_messages

    batched_options = SERVE_PRESETS["default"]
    assert batched_options.continuous_batching
    sequential_options = dataclasses.replace(batched_options, continuous_batching=False)
    prompts = [first_messages(problem) for problem in OS_PROBLEMS]
    async with TransformersServeManager(options=sequential_options) as sequential:
        await sequential.serve(default_model)
        one_by_one = [(await sequential.chat(p, max_tokens=24)).text for p in prompts]
    async with TransformersServeManager(options=batched_options) as batched:
        await batched.serve(default_model)
        together = await asyncio.gather(*(batched.chat(p, max_tokens=24) for p in prompts))
        again = await batched.chat(prompts[0], max_tokens=24)  # a later round reuses the cached prefix
    assert len(set(one_by_one)) > 1  # the prompts differ, so must the answers: nothing is answered blindly
    assert [reply.text for reply in together] == one_by_one
    assert again.text == one_by_one[0]
