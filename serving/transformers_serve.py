"""`transformers serve` in a subprocess: the embedded CPU default.

It serves checkpoints by path, loading whatever a request names, so a swap is a request for another path.
Before each swap we POST /reset, which unloads every loaded model: over hundreds of candidates the server
holds one model at a time and its memory stays flat. Model loading never touches a hub (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from cycleqd.serving.client import ClientSettings, ServedModel
from cycleqd.serving.cpu_dtype import cpu_serving_dtype
from cycleqd.serving.errors import EndpointError, ModelRefError
from cycleqd.serving.in_vllm.batch_invariant import BATCH_INVARIANT_ENV
from cycleqd.serving.manager import ProcessServerManager
from cycleqd.serving.model_ref import ExternalEndpoint, LocalCheckpoint, ModelRef
from cycleqd.serving.server_process import ServerProcess, free_port
from cycleqd.serving.step_threads import WIDE_STEP_THREADS_ENV, wide_threads_here
from cycleqd.serving.tool_protocol import ToolFormat, ToolSupport, checkpoint_tool_support

PER_SEQUENCE_ENTRY = "cycleqd.serving.per_sequence_attention"
TOOLS_ENTRY = "cycleqd.serving.transformers_tools"  # transformers' own server, tool calling completed

# OpenMP threads that spin at a barrier burn their core: on a loaded 2-core machine the spinning thread is then
# descheduled, and its partner waits a whole time slice at the next barrier (two threads throughout, with one busy
# process beside: 1.8 tokens/s at concurrency 8 against 54 unloaded). Threads that sleep wake promptly instead
# (33 under the same load); waking costs too much for decode's small kernels (25 unloaded), so only prefill
# steps go wide (serving.step_threads).
SLEEP_AT_BARRIERS = {"OMP_WAIT_POLICY": "PASSIVE"}
PROBE = [{"role": "user", "content": "Say OK."}]


@dataclass(frozen=True)
class ServeOptions:
    """How the server decodes. Continuous batching runs every in-flight request in one forward pass per token
    (paged KV cache); without it the server answers one request at a time. `threads` sets torch's intra-op
    threads in the server (None: torch's default, one per core). `packed_attention` keeps transformers' own SDPA
    over the whole batch instead of one sequence at a time (serving.per_sequence_attention); it only matters with
    continuous batching. `wide_step_threads` runs the forward steps that carry prefill on that many threads and
    decode steps on `threads` (serving.step_threads; per-sequence attention only). `deterministic`: every linear
    layer computes a row alike whatever else shares the forward pass (serving/in_vllm/batch_invariant.py), so a
    greedy answer does not depend on the other requests in flight."""

    dtype: str = "auto"
    continuous_batching: bool = False
    block_size: int | None = None
    num_blocks: int | None = None
    max_batch_tokens: int | None = None
    threads: int | None = None
    packed_attention: bool = False
    wide_step_threads: int | None = None
    deterministic: bool = False

    @property
    def entry_module(self) -> str:
        """The module the server process runs: `transformers serve` with tool calling completed, and with
        per-sequence attention unless packed."""
        if self.continuous_batching and not self.packed_attention:
            return PER_SEQUENCE_ENTRY
        return TOOLS_ENTRY

    def argv(self) -> list[str]:
        args = ["--dtype", self.dtype]
        if self.continuous_batching:
            args.append("--continuous-batching")
            for flag, value in (
                ("--cb-block-size", self.block_size),
                ("--cb-num-blocks", self.num_blocks),
                ("--cb-max-batch-tokens", self.max_batch_tokens),
            ):
                if value is not None:
                    args += [flag, str(value)]
        return args

    def env(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}
        if self.wide_step_threads and self.entry_module == PER_SEQUENCE_ENTRY:
            env |= {WIDE_STEP_THREADS_ENV: str(self.wide_step_threads), **SLEEP_AT_BARRIERS}
        if self.deterministic:
            env[BATCH_INVARIANT_ENV] = "1"
        return env

    def describe(self) -> str:
        words = self.argv()
        if self.continuous_batching:
            words.append("(packed attention)" if self.packed_attention else "(per-sequence attention)")
        if self.threads:
            words.append(f"OMP_NUM_THREADS={self.threads}")
        if WIDE_STEP_THREADS_ENV in self.env():
            words.append(f"(prefill steps on {self.wide_step_threads} threads, OMP_WAIT_POLICY=PASSIVE)")
        if self.deterministic:
            words.append("deterministic")
        return " ".join(words)


# The batching presets cap the paged KV cache: left to itself it takes a share of *free memory* (~10 GB seen on a
# 24 GiB machine). 96 blocks of 256 tokens hold ~24k tokens: eight OS episodes at their longest (5 rounds of
# ~2.5k tokens) or 32 short chats; about 1.1 GB for SmolLM2-135M in fp32 (46 KB per token), half that in bf16.
_CB = {"continuous_batching": True, "block_size": 256, "num_blocks": 96, "max_batch_tokens": 2048}
SERVE_PRESETS: dict[str, ServeOptions] = {
    "sequential-bf16": ServeOptions(dtype="bfloat16"),
    "sequential-fp32": ServeOptions(dtype="float32"),
    "cb-bf16": ServeOptions(dtype="bfloat16", **_CB),  # type: ignore[arg-type]
    "cb-fp32": ServeOptions(dtype="float32", **_CB),  # type: ignore[arg-type]
    "cb-fp32-t1": ServeOptions(dtype="float32", threads=1, **_CB),  # type: ignore[arg-type]
    "cb-bf16-t1": ServeOptions(dtype="bfloat16", threads=1, **_CB),  # type: ignore[arg-type]
    "cb-fp32-b32": ServeOptions(dtype="float32", **{**_CB, "block_size": 32, "num_blocks": 768}),  # type: ignore[arg-type]
    "cb-fp32-t1-packed": ServeOptions(dtype="float32", threads=1, packed_attention=True, **_CB),  # type: ignore[arg-type]
    "cb-fp32-t1-wide2": ServeOptions(dtype="float32", threads=1, wide_step_threads=2, **_CB),  # type: ignore[arg-type]
}
# The default batches (greedy answers are those the same settings give one request at a time:
# tests/test_transformers_serve.py compares them), in fp32 on a CPU that has no bf16 instructions (serving.cpu_dtype).
# Decode steps on one intra-op thread: they run many small kernels per token, and with two threads each waits at
# an OpenMP barrier for the other (cb-fp32 measured 0.08 of batched generate with 2 threads, 1.35 with one, side by
# side under the same load). Steps that carry prefill on every usable core, threads sleeping at barriers
# (serving.step_threads, SLEEP_AT_BARRIERS): a round's re-prefill of the grown conversation is a large share of an
# agent job (bench/eval_e2e.py --job demo: 0.112 -> 0.147 episodes/s).
SERVE_PRESETS["default"] = ServeOptions(
    dtype=cpu_serving_dtype(),
    threads=1,
    wide_step_threads=wide_threads_here(),
    **_CB,  # type: ignore[arg-type]
)


# glibc serves allocations below its (growing) mmap threshold from heap arenas, which a swap's freed weights leave
# fragmented: in fp32 fifty swaps grew the server from 2.9 to 5.7 GB. Our own server entry trims the heap as it
# runs (serving.heap_trim); transformers' own entry (the sequential and packed presets) maps every allocation of
# 1 MiB and more instead, at a price in speed (each large temporary is mapped and faulted in anew).
RETURN_FREED_WEIGHTS = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def default_options(device: str, dtype: str = "auto", *, deterministic: bool = False) -> ServeOptions:
    """The default preset; on an accelerator, in the checkpoint's own dtype and torch's threads (the CPU's dtype
    and thread choices are about CPU kernels). `dtype` other than auto (`eval --dtype`) overrides the dtype alone;
    `deterministic` (`eval --deterministic`) asks for batch-invariant linear layers."""
    options = dataclasses.replace(SERVE_PRESETS["default"], deterministic=deterministic)
    if device != "cpu":
        options = dataclasses.replace(options, dtype="auto", threads=None, wide_step_threads=None)
    return options if dtype == "auto" else dataclasses.replace(options, dtype=dtype)


def transformers_tool_support(ref: LocalCheckpoint) -> ToolSupport:
    """What this server makes of the checkpoint's tools (serving.transformers_tools): Hermes-style calls, in
    cycleqd's template or the model's own, are parsed; transformers has no parser for Llama 3's or Mistral's."""
    support = checkpoint_tool_support(ref.path)
    if support.format in (ToolFormat.LLAMA3_JSON, ToolFormat.MISTRAL):
        return ToolSupport(ToolFormat.UNSUPPORTED, why=(
            f"transformers serve cannot read {ref.label}'s tool calls ({support.format} format); serve it with "
            "--server vllm"))  # fmt: skip
    return support


def default_log_dir() -> Path:
    from cycleqd.serving.default_model import cache_root

    return cache_root() / "logs"


class TransformersServeManager(ProcessServerManager):
    kind = "transformers-serve"

    def __init__(
        self,
        *,
        device: str = "cpu",
        options: ServeOptions | None = None,
        log_dir: Path | None = None,
        client_settings: ClientSettings | None = None,
    ) -> None:
        # Requests in flight are what a batching server batches: let the episodes' concurrency through.
        super().__init__(client_settings or ClientSettings(max_concurrency=32))
        self.device = device
        self.options = options or default_options(device)
        self.log_dir = log_dir or default_log_dir()

    def _make_process(self) -> ServerProcess:
        port = free_port()
        argv = [
            sys.executable, "-m", self.options.entry_module, "serve",
            "--host", "127.0.0.1", "--port", str(port),
            "--device", self.device, *self.options.argv(),
            "--model-timeout", "-1",  # we unload explicitly, at each swap
            "--log-level", "warning",
        ]  # fmt: skip
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **self.options.env()}
        if self.options.entry_module != PER_SEQUENCE_ENTRY:
            env |= RETURN_FREED_WEIGHTS
        return ServerProcess(argv, env=env, log_path=self.log_dir / f"transformers-serve-{port}.log", port=port)

    def decoding(self) -> str:
        return f"{self.kind} --device {self.device} {self.options.describe()}"

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    async def _load(self, ref: ModelRef) -> ServedModel:
        if isinstance(ref, ExternalEndpoint):
            raise ModelRefError(f"{ref.label} is served by its own server; use an external endpoint manager")
        name = str(ref.path) if isinstance(ref, LocalCheckpoint) else ref.name
        identity = await asyncio.to_thread(ref.identity)
        self.tool_support = None
        async with httpx.AsyncClient(base_url=self.root_url, timeout=httpx.Timeout(600, connect=10)) as http:
            (await http.post("/reset")).raise_for_status()
            await self._stream_load(http, name)
        served = ServedModel(name, identity)
        # The request names the checkpoint by path, so the answer cannot come from another model; one token
        # through the public API proves it is loaded and answering.
        await self.client.chat(served, PROBE, max_tokens=1)
        if isinstance(ref, LocalCheckpoint):  # a hub name's template is read by the server alone
            self.tool_support = transformers_tool_support(ref)
        return served

    async def _stream_load(self, http: httpx.AsyncClient, name: str) -> None:
        async with http.stream("POST", "/load_model", json={"model": name}) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                raise EndpointError(
                    f"transformers serve refused to load {name}: HTTP {response.status_code} {body[:300]}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("status") == "error":
                    raise ModelRefError(f"transformers serve could not load {name}: {event.get('message', '')[:500]}")
                if event.get("status") == "ready":
                    return
        raise EndpointError(f"transformers serve stopped reporting before {name} was ready; log:\n{self.logs(20)}")
