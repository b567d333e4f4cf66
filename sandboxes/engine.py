"""Access to the Docker engine, and the set-up path that provides one on a Debian machine where we are root.

`docker_client()` only connects. `ensure_engine()` is the set-up path: if no engine answers and we are root on
Debian, it installs Debian's `docker.io` (and `debootstrap`, which image builds need), starts `dockerd` in the
background and waits until it answers. Sandboxes have no network, so `--iptables=false` is enough; image builds
that need the package mirror use the host's network.
"""

from __future__ import annotations

import fcntl
import functools
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from cycleqd.sandboxes.errors import EngineUnavailableError

DOCKERD_LOG = Path("/var/log/cycleqd-dockerd.log")
HOST_PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap"}
_LOCK = Path("/tmp/cycleqd-engine.lock")
OPEN_FILES = 1 << 20


@dataclass(frozen=True)
class EngineStatus:
    reachable: bool
    version: str = ""
    api_version: str = ""
    error: str = ""


def engine_status() -> EngineStatus:
    try:
        client = docker.from_env(timeout=10)
        info = client.version()
        client.close()
    except docker.errors.DockerException as exc:
        return EngineStatus(False, error=str(exc))
    return EngineStatus(True, info.get("Version", "?"), info.get("ApiVersion", "?"))


@functools.cache
def docker_client() -> docker.DockerClient:
    """A client of the engine DOCKER_HOST names (default: the local socket). One per process."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineUnavailableError(
            f"no Docker engine answers ({exc}). Run `cycleqd engine start` (as root on Debian it installs and "
            "starts one), or start Docker yourself and set DOCKER_HOST if it is not on the default socket."
        ) from exc
    return client


def _is_debian() -> bool:
    return Path("/etc/debian_version").exists()


def _missing_host_packages() -> list[str]:
    return [pkg for binary, pkg in HOST_PACKAGES.items() if shutil.which(binary) is None]


def install_host_packages(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineUnavailableError(f"`{' '.join(argv)}` failed:\n{done.stderr[-2000:]}")


def _raise_open_files_limit() -> None:
    # As Docker's own service unit does (LimitNOFILE=infinity): containers inherit the daemon's limit, and task
    # suites assume the usual 1048576 (AgentBench's `echo 123321>/var/x` is a valid redirect only then). Where
    # we may not raise the hard limit (no CAP_SYS_RESOURCE), the soft limit goes up to the hard one.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_dockerd() -> None:
    """Start dockerd detached from us (it must outlive this process), logging to DOCKERD_LOG."""
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(DOCKERD_LOG, "ab") as logfile:
        subprocess.Popen(
            ["dockerd", "--iptables=false"],
            preexec_fn=_raise_open_files_limit,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_engine(timeout_s: float) -> EngineStatus:
    deadline = time.monotonic() + timeout_s
    status = engine_status()
    while not status.reachable and time.monotonic() < deadline:
        time.sleep(0.5)
        status = engine_status()
    return status


def ensure_engine(timeout_s: float = 60.0) -> EngineStatus:
    """Make sure an engine answers, installing and starting one if we can. Idempotent and quiet when one runs."""
    status = engine_status()
    if status.reachable and not _missing_host_packages():
        return status
    if os.geteuid() != 0 or not _is_debian():
        if status.reachable:
            return status  # image builds will say what they miss
        raise EngineUnavailableError(
            "no Docker engine answers and this is not a Debian machine where we are root, so cycleqd cannot "
            "install one. Install Docker Engine (https://docs.docker.com/engine/install/) and `debootstrap`, "
            f"start the engine, and make its socket reachable for this user. (Docker said: {status.error})"
        )
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two set-ups at once must not start two daemons
        missing = _missing_host_packages()
        if missing:
            install_host_packages(missing)
        status = engine_status()
        if not status.reachable:
            start_dockerd()
            status = wait_for_engine(timeout_s)
    if not status.reachable:
        tail = DOCKERD_LOG.read_text(errors="replace")[-2000:] if DOCKERD_LOG.exists() else ""
        raise EngineUnavailableError(
            f"started dockerd but it did not answer within {timeout_s:.0f} s. Its log ({DOCKERD_LOG}):\n{tail}"
        )
    return status
