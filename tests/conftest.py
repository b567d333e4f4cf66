"""Shared, expensive fixtures: the real Docker engine and the sandbox images, once per test session; and the test
tiers, marked from the fixtures each test uses."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from cycleqd import cli
from cycleqd.envs.registry import register, unregister
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.engine import ensure_engine
from cycleqd.sandboxes.errors import EngineUnavailableError
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.sandboxes.labels import OWNER_PID
from cycleqd.sandboxes.reaper import labels_of, managed_containers, name_of
from tests.checkpoints import perturbed_checkpoint
from tests.cli_in_process import Run
from tests.echo_environment import EchoEnvironment
from tests.sandbox_settings import TEST_LIMITS

# -- tiers -------------------------------------------------------------------------------------------------------

# What a fixture brings with it, so that a test is marked by what it uses rather than by hand (a mark on a test
# that later gains a fixture would go stale). `item.fixturenames` holds every fixture a test needs, through the
# fixtures it asks for, so the roots are enough: `sandbox`, `os_image` and the MariaDB server all need
# `docker_engine`; `tserve`, `perturbed_model` and every trained expert need `default_model`.
FIXTURE_TIERS: dict[str, tuple[str, ...]] = {
    "docker_engine": ("docker",),
    "default_model": ("model",),  # a real checkpoint (converted once per machine), so torch loads real weights
    "tserve": ("slow",),  # a real `transformers serve`: seconds to start
    "vllm_server": ("vllm", "slow"),  # a real vLLM server: minutes to start on a CPU
}

# What no fixture tells. test_vllm's `vllm` is the real server, while test_vllm_protocol's fixture of that name is
# a protocol double. The `slow` modules start `cycleqd` or another Python child (seconds each on two cores, torch
# imported anew), or compute for seconds (bootstraps, a run cancelled at every moment, inspect logs, hundreds of
# writes from several processes): measured here, they were the ones whose tests took more than a second or two.
SLOW_MODULES = ("test_agentbench_rules", "test_algorithm", "test_api", "test_api_in_a_loop", "test_cli",
                "test_cli_errors", "test_demo", "test_deterministic_decoding", "test_eval", "test_gpu_check",
                "test_import_graph", "test_model_names", "test_orchestrator_logic", "test_package", "test_racing",
                "test_report", "test_results_reading", "test_score_intervals", "test_sft", "test_store",
                "test_training_data", "test_tui")  # fmt: skip
MODULE_TIERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(SLOW_MODULES, ("slow",)),
    "test_vllm": ("vllm", "model", "slow"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {tier for name in item.fixturenames for tier in FIXTURE_TIERS.get(name, ())}
        tiers.update(MODULE_TIERS.get(item.module.__name__.rpartition(".")[2], ()) if item.module else ())
        for tier in sorted(tiers - {mark.name for mark in item.iter_markers()}):
            item.add_marker(tier)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """The real engine; started (and installed, as root on Debian) if it does not answer."""
    try:
        ensure_engine()
    except EngineUnavailableError as exc:
        if os.geteuid() == 0:
            raise
        pytest.skip(f"no Docker engine and not root, so none can be started: {exc}")
    client = docker.from_env(timeout=120)
    yield client
    # Nothing of this test process may outlive it.
    leaked = [name_of(c) for c in managed_containers(client) if labels_of(c).get(OWNER_PID) == str(os.getpid())]
    client.close()
    assert not leaked, f"containers left behind by the tests: {leaked}"


@pytest.fixture(scope="session")
def os_image(docker_engine: docker.DockerClient) -> str:
    build_images(docker_engine, ["os-default"])
    return image_tag("os-default")


@pytest.fixture
async def sandbox(os_image: str) -> AsyncIterator[DockerSandbox]:
    box = await DockerSandbox.start(os_image, limits=TEST_LIMITS)
    try:
        yield box
    finally:
        await box.stop()


@pytest.fixture(params=["main shell", "exec"])
async def session(sandbox: DockerSandbox, request: pytest.FixtureRequest):  # noqa: ANN201 - a BashSession
    """Both kinds a sandbox gives: its main process's shell (attached), and, while that one is taken, an exec."""
    holder = await sandbox.open_session() if request.param == "exec" else None
    shell = await sandbox.open_session()
    try:
        yield shell
    finally:
        await shell.close()
        if holder is not None:
            await holder.close()


# -- models and servers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def default_model():  # noqa: ANN201 - a LocalCheckpoint
    """The embedded SmolLM2-135M-Instruct, converted from its GGUF once per machine."""
    from cycleqd.serving.default_model import default_checkpoint

    return default_checkpoint()


@pytest.fixture(scope="session")
def perturbed_model(default_model, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The default model with noise on every matrix: a second, genuinely different checkpoint."""
    from cycleqd.serving.model_ref import validate_checkpoint

    return validate_checkpoint(perturbed_checkpoint(default_model.path, tmp_path_factory.mktemp("perturbed"), 0, 0.5))


@pytest.fixture(scope="session")
def smollm_experts(default_model, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201 - list[Path]
    """Three experts for real evolutions: the default model with a little noise each. Shared by the session, so
    their SVD cache (the evolution's first stage, tens of seconds per expert on two cores) is built once."""
    root = tmp_path_factory.mktemp("smollm-experts")
    return [perturbed_checkpoint(default_model.path, root / f"expert-{k}", seed=10 + k, scale=0.05) for k in range(3)]


@pytest.fixture(scope="session")
async def tserve(default_model):  # noqa: ANN001, ANN201 - a TransformersServeManager serving the default
    """One real `transformers serve` for the session, serving the default model."""
    from cycleqd.serving.transformers_serve import TransformersServeManager

    manager = TransformersServeManager()
    await manager.start()
    await manager.serve(default_model)
    yield manager
    await manager.stop()


@pytest.fixture(scope="session")
async def vllm_server(default_model, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201 - a VLLMManager
    """One real vLLM server for the session (the CPU build here), serving the default model, in the deterministic
    mode (`--deterministic`): tests/test_deterministic_decoding.py needs it, and the tool-calling tests are alike
    in either mode, so one start serves both. tests/test_vllm.py keeps its own, in the default mode, which its tests
    kill and restart."""
    from cycleqd.serving.gpu import gpu_available
    from cycleqd.serving.vllm_launch import cpu_vllm_available
    from cycleqd.serving.vllm_serve import VLLMManager

    if not (cpu_vllm_available() or gpu_available()):
        pytest.skip("no vLLM here: `bash scripts/setup.sh` makes its CPU venv (.venv-vllm); on a GPU, cycleqd[vllm]")
    manager = VLLMManager(max_model_len=2048, log_dir=tmp_path_factory.mktemp("vllm-logs"), deterministic=True)
    await manager.serve(default_model)
    yield manager
    await manager.stop()


@pytest.fixture
def echo_environment() -> Iterator[EchoEnvironment]:
    """The toy fourth environment (tests/echo_environment.py), registered for one test."""
    env = register(EchoEnvironment())
    yield env
    unregister(env.name)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """`cycleqd ARGS` as `cli.main` runs it (the error boundary included): exit status, stdout, stderr."""
    # The engine's client is where an eval would leave this process's hands: these commands must stop before it.
    monkeypatch.setattr("cycleqd.eval.evaluate.docker_client", lambda: pytest.fail("the command went on to Docker"))
    sigterm = signal.getsignal(signal.SIGTERM)  # the CLI installs its own

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["cycleqd", *args])
        try:
            with pytest.raises(SystemExit) as exited:
                cli.main()
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capsys.readouterr()
        return exited.value.code or 0, out, err

    return run
