"""Protocol tests of the vLLM manager for behaviour that the vLLM installed here (0.32.0, tested for real in
tests/test_vllm.py) does not have: versions before 0.16 (no reload from a path: every swap restarts), 0.33's
prefix-cache reset that reports failure, the GPU slot mapping, and the drain order of a swap, which the real
server is too fast to show. They run against tests/vllm_protocol_server.py, an HTTP server that answers as vLLM
0.16.0's source says `vllm serve` answers (and 0.33.0's, for the prefix-cache reset's body; the files are cited
there). They check that our side speaks that protocol; they do not verify vLLM itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from cycleqd.serving.errors import EndpointError
from cycleqd.serving.fingerprint import PROBE_TEXT, Fingerprint, FingerprintFormatError, probe_request, swap_verified
from cycleqd.serving.model_ref import LocalCheckpoint
from cycleqd.serving.vllm_launch import Device, VLLMLaunch
from cycleqd.serving.vllm_serve import SwapMethod, VLLMManager, gpu_for_slot, parse_version

INSTRUMENT = Path(__file__).parent / "vllm_protocol_server.py"
INSTRUMENT_LAUNCH = VLLMLaunch(Device.GPU, (sys.executable, str(INSTRUMENT)))  # answers as a GPU server would
QUESTION = [{"role": "user", "content": "hi"}]


def checkpoint(root: Path, name: str, weights: bytes, template: str = "{{ messages }}") -> LocalCheckpoint:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (folder / "model.safetensors").write_bytes(weights)
    return LocalCheckpoint(folder)


class Instrument:
    """The protocol server's event log and control file, and a manager that launches it."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
        self.events_path, self.control_path = root / "events.jsonl", root / "control.json"
        monkeypatch.setenv("FAKE_VLLM_EVENTS", str(self.events_path))
        monkeypatch.setenv("FAKE_VLLM_CONTROL", str(self.control_path))
        monkeypatch.setenv("FAKE_VLLM_VERSION", version)
        self.manager = VLLMManager(launch=INSTRUMENT_LAUNCH, log_dir=root / "logs")

    def control(self, **settings: object) -> None:
        self.control_path.write_text(json.dumps(settings))

    def events(self, *names: str) -> list[dict]:
        lines = self.events_path.read_text().splitlines() if self.events_path.exists() else []
        return [e for e in map(json.loads, lines) if not names or e["event"] in names]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, LocalCheckpoint]:
    return {name: checkpoint(tmp_path, name, name.encode() * 64) for name in ("a", "b", "c")}


@pytest.fixture
async def vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):  # noqa: ANN201
    instrument = Instrument(tmp_path, monkeypatch, getattr(request, "param", "0.16.0"))
    try:
        yield instrument
    finally:
        await instrument.manager.stop()


def weights_answer(text: str, ref: LocalCheckpoint) -> bool:
    import hashlib

    return text == f"weights {hashlib.sha256((ref.path / 'model.safetensors').read_bytes()).hexdigest()[:12]}"


async def test_a_swap_drains_reloads_in_place_resets_and_resumes(vllm: Instrument, models) -> None:  # noqa: ANN001
    manager = vllm.manager
    await manager.serve(models["a"])
    assert manager.swap_method is SwapMethod.RELOAD_IN_PLACE and manager.version == (0, 16, 0)
    start = vllm.events("start")[0]
    assert start["dev_mode"] == "1" and "--enable-sleep-mode" not in start["argv"]
    vllm.control(chat_delay_s=1.0)
    in_flight = asyncio.create_task(manager.chat(QUESTION))
    await asyncio.sleep(0.3)
    await manager.serve(models["b"])
    assert weights_answer((await in_flight).text, models["a"])  # drained with the old weights, not cut off
    assert manager.last_method is SwapMethod.RELOAD_IN_PLACE and len(vllm.events("start")) == 1
    order = [e["event"] for e in vllm.events("chat_end", "pause", "reload_weights", "reset_prefix_cache", "resume")]
    assert order == ["chat_end", "pause", "reload_weights", "reset_prefix_cache", "resume"]
    assert vllm.events("pause")[0]["mode"] == "wait"
    assert vllm.events("reload_weights")[0]["path"] == str(models["b"].path)
    vllm.control()
    assert weights_answer((await manager.chat(QUESTION)).text, models["b"])
    await manager.serve(models["a"])  # back to a: its fingerprint from the fresh start is matched within tolerance
    assert manager.last_method is SwapMethod.RELOAD_IN_PLACE and not manager.fallbacks


@pytest.mark.parametrize("vllm", ["0.15.1"], indirect=True)
async def test_before_0_16_every_swap_is_a_restart(vllm: Instrument, models) -> None:  # noqa: ANN001
    manager = vllm.manager
    await manager.serve(models["a"])
    await manager.serve(models["b"])
    assert manager.swap_method is SwapMethod.RESTART and manager.last_method is SwapMethod.RESTART
    assert not vllm.events("reload_weights", "pause")
    assert [e["model"] for e in vllm.events("start")] == [str(models["a"].path), str(models["b"].path)]
    assert weights_answer((await manager.chat(QUESTION)).text, models["b"])


@pytest.mark.parametrize("vllm", ["0.33.0"], indirect=True)
async def test_a_prefix_cache_reset_that_reports_failure_is_a_failed_swap(vllm: Instrument, models) -> None:  # noqa: ANN001
    manager = vllm.manager
    await manager.serve(models["a"])
    vllm.control(reset_success=False)
    await manager.serve(models["b"])
    assert manager.last_method is SwapMethod.RESTART and "success=false" in manager.fallbacks[0]
    assert len(vllm.events("reset_prefix_cache")) == 3  # retried, then given up
    vllm.control()
    await manager.serve(models["c"])
    assert manager.last_method is SwapMethod.RELOAD_IN_PLACE  # {"success": true} is a success


async def test_slot_i_runs_on_the_i_th_gpu_of_the_parents_list(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    models,  # noqa: ANN001
) -> None:
    assert gpu_for_slot(0, "4,5") == "4" and gpu_for_slot(1, " 4, 5 ") == "5" and gpu_for_slot(1, None) == "1"
    assert gpu_for_slot(0, "GPU-8f2e,GPU-77aa") == "GPU-8f2e"
    with pytest.raises(EndpointError, match=r"slot 2 needs GPU #3, but CUDA_VISIBLE_DEVICES='4,5' lists 2"):
        gpu_for_slot(2, "4,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    instrument = Instrument(tmp_path, monkeypatch, "0.16.0")
    instrument.manager = VLLMManager(gpu=1, launch=INSTRUMENT_LAUNCH, log_dir=tmp_path / "logs")
    try:
        await instrument.manager.serve(models["a"])
        assert instrument.events("start")[0]["cuda_visible_devices"] == "5"
    finally:
        await instrument.manager.stop()


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_versions_parse_as_vllm_reports_them() -> None:
    assert parse_version("0.16.0") == (0, 16, 0) and parse_version("0.16.1rc1.dev12+gabc") == (0, 16, 1)
    assert parse_version("0.33") == (0, 33, 0) and parse_version("dev") == ()


def probe_answer(values: list[float], with_ids: bool = True) -> dict:
    """A /v1/completions answer shaped as vLLM 0.16.0's completion/protocol.py says (JSON keys are strings)."""
    ids = [7, *range(100, 100 + len(values))]
    entries = [None] + [
        {str(token): {"logprob": value, "rank": 3, "decoded_token": "x"}}
        for token, value in zip(ids[1:], values, strict=True)
    ]
    return {"choices": [{"prompt_logprobs": entries, "prompt_token_ids": ids if with_ids else None}]}


def test_fingerprints_are_prompt_logprobs_compared_within_a_tolerance() -> None:
    request = probe_request("candidate")
    assert request["prompt"] == PROBE_TEXT and request["prompt_logprobs"] == 0 and request["max_tokens"] == 1
    assert len(PROBE_TEXT.split()) > 40
    a = Fingerprint.from_completion(probe_answer([-2.0, -5.5, -0.7]))
    assert a.token_ids == (100, 101, 102) and a.logprobs == (-2.0, -5.5, -0.7)
    assert Fingerprint.from_completion(probe_answer([-2.0, -5.5, -0.7], with_ids=False)) == a
    noisy = Fingerprint.from_completion(probe_answer([-2.01, -5.49, -0.71]))
    other = Fingerprint.from_completion(probe_answer([-2.3, -5.0, -0.9]))
    assert a.matches(noisy) and not a.matches(other)
    assert a.distance(Fingerprint((1, 2, 3), a.logprobs)) == float("inf")  # tokenised differently
    two = probe_answer([-1.0])
    two["choices"][0]["prompt_logprobs"][1]["555"] = {"logprob": -9.0}  # a top-k entry besides the prompt's token
    assert Fingerprint.from_completion(two).logprobs == (-1.0,)
    with pytest.raises(FingerprintFormatError, match="no usable prompt_logprobs"):
        Fingerprint.from_completion({"choices": [{"text": "x", "logprobs": None}]})
    assert swap_verified(noisy, expected=a, previous=other, same_weights_as_previous=False) == (True, "")
    assert not swap_verified(other, expected=a, previous=None, same_weights_as_previous=False)[0]
    stale, why = swap_verified(noisy, expected=None, previous=a, same_weights_as_previous=False)
    assert not stale and "previous model" in why  # near-identical to what was served: not trusted
    assert swap_verified(noisy, expected=None, previous=a, same_weights_as_previous=True)[0]
    assert swap_verified(other, expected=None, previous=a, same_weights_as_previous=False)[0]
