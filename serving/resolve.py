"""From what the user typed to a model reference and the server manager that can serve it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from cycleqd.serving.client import ClientSettings
from cycleqd.serving.errors import ModelRefError
from cycleqd.serving.gpu import gpu_available
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import DEFAULT_KEY_ENV, ExternalEndpoint, ModelRef, parse_model_ref, server_prefix
from cycleqd.serving.vllm_launch import cpu_vllm_available

DEFAULT = "default"
# What `eval --dtype` takes. `auto` is the engine's choice for its device, as it always was: on a GPU the
# checkpoint's own dtype; on a CPU the one its instructions compute fast (serving/cpu_dtype.py: bf16 only with
# AVX-512 BF16 or AMX, else fp32). A named dtype is handed to whichever server starts.
DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_model(
    text: str | None,
    *,
    key_env: str = DEFAULT_KEY_ENV,
    allow_download: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelRef:
    """`None` or 'default' is the embedded SmolLM2 checkpoint (converted on first use)."""
    if text is None or server_prefix(text)[1] == DEFAULT:
        from cycleqd.serving.default_model import default_checkpoint

        return default_checkpoint(progress=progress)
    return parse_model_ref(text, key_env=key_env, allow_download=allow_download)


def server_choice(text: str | None, server: str) -> str:
    """The server a `vllm/…` reference names wins over 'auto'; contradicting an explicit --server is an error."""
    named = server_prefix(text or "")[0]
    if named is None or server == named:
        return server
    if server != "auto":
        raise ModelRefError(f"{text!r} names the {named} server, but --server {server} was given; drop one of them")
    return named


# From how many episodes on a CPU the vLLM server pays for its start (26 s with its compiled model cached, up to
# ~100 s the first time, against ~4 s for transformers serve) with its faster decoding: `python -m bench.eval_e2e
# --vllm --job demo` measured the pay-back at 23 episodes (limit 3) and 29 (limit 8) on a 2-core Xeon. The README's
# main job (9 episodes) stays on transformers serve; an evolution, the demo and whole splits go to vLLM.
VLLM_CPU_MIN_EPISODES = 30


def engine_for(server: str, *, episodes: int | None) -> str:
    """The engine `server` means for a job of `episodes` episodes (None: unknown, a long job): an explicit
    vllm/transformers as given; auto is vLLM on a GPU that has it, vLLM's CPU build on a CPU that runs it when the
    job is long enough to pay for its start, else transformers serve. Decided once per job and kept with its run."""
    if server != "auto":
        return server
    if gpu_available():
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if cpu_vllm_available() and (episodes is None or episodes >= VLLM_CPU_MIN_EPISODES):
        return "vllm"
    return "transformers"


def manager_for(
    ref: ModelRef,
    *,
    server: str = "auto",
    client_settings: ClientSettings | None = None,
    slot: int = 0,
    episodes_at_once: int | None = None,
    episodes: int | None = 0,
    dtype: str = "auto",
    deterministic: bool = False,
) -> ServerManager:
    """`server`: auto, vllm, transformers (`engine_for`, with `episodes` the job's size; 0, the default, is a
    short job such as one chat). `dtype`: one of `DTYPES`, for a server we start (an endpoint's is its own).
    `slot` picks the GPU when an evolution runs one server per GPU. `episodes_at_once`: an endpoint's client lets
    that many requests fly (each episode waits on one reply at a time), or a run's --concurrency above the client's
    default would queue on the client instead of reaching the endpoint. `deterministic`: a server we start decodes
    a request alike whatever else it batches with it (an endpoint's decoding is its own)."""
    if isinstance(ref, ExternalEndpoint):
        from cycleqd.serving.external import ExternalManager

        if client_settings is None and episodes_at_once is not None:
            client_settings = ClientSettings(max_concurrency=max(episodes_at_once, ClientSettings.max_concurrency))
        return ExternalManager(ref, client_settings)
    if engine_for(server, episodes=episodes) == "vllm":
        from cycleqd.serving.vllm_serve import VLLMManager

        return VLLMManager(gpu=slot, client_settings=client_settings, dtype=dtype, deterministic=deterministic)
    from cycleqd.serving.transformers_serve import TransformersServeManager, default_options

    device = "cuda" if gpu_available() else "cpu"
    options = default_options(device, dtype, deterministic=deterministic)
    return TransformersServeManager(device=device, options=options, client_settings=client_settings)
