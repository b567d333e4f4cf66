"""Access to the Docker engine, and the set-up path that provides one on a Debian machine where we are root.

`docker_client()` only connects. `ensure_engine()` is the set-up path: if no engine answers and we are root on
Debian, it installs Debian's `docker.io` (and `debootstrap`, which image builds need), starts `dockerd` in the
background and waits until it answers. Sandboxes have no network, so `--iptables=false` is enough; image builds
that need the package mirror use the host's network.

What one sandbox may write. dockerd can cap a container's writable layer (`--storage-opt size`) only on btrfs, zfs
or overlay2 on xfs with project quota. This project's hosts have overlay2 on ext4 and a kernel without quota support
(CONFIG_QUOTA: no ext4 or xfs project quota) or device-mapper, so the one way is a btrfs data root with quotas on.
It costs: each sandbox lifecycle takes 3.9× as long at concurrency 1 and 7.9× at 8 (`bench/disk_quota.py`; btrfs
alone, without quotas, 3×). So it is opt-in: `ensure_engine(disk_quota=True)` (`cycleqd engine start --disk-quota`)
starts dockerd on a `QuotaDataRoot`. Every engine gets the per-file cap (`SandboxLimits`: RLIMIT_FSIZE), which costs
nothing and stops one file from growing past the limit.
"""

from __future__ import annotations

import fcntl
import functools
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from cycleqd.sandboxes.errors import EngineUnavailableError
from cycleqd.sandboxes.limits import quota_supported

DOCKERD_LOG = Path("/var/log/cycleqd-dockerd.log")
HOST_PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap", "mkfs.btrfs": "btrfs-progs"}
DATA_ROOT = Path("/var/lib/cycleqd-docker")  # the data root of a dockerd we start
DATA_IMAGE = Path("/var/lib/cycleqd-docker.btrfs")  # the sparse file holding its btrfs filesystem
DATA_IMAGE_MAX = 64 << 30
_LOCK = Path("/tmp/cycleqd-engine.lock")
OPEN_FILES = 1 << 20


@dataclass(frozen=True)
class EngineStatus:
    reachable: bool
    version: str = ""
    api_version: str = ""
    error: str = ""
    storage: str = ""  # the storage driver
    disk_limits: bool = False  # whether it can cap what one sandbox writes

    def describe(self) -> str:
        limits = "sandbox disk limits enforced" if self.disk_limits else "sandbox disk limits NOT enforced"
        return f"Docker {self.version} (API {self.api_version}), storage {self.storage}: {limits}"


def engine_status() -> EngineStatus:
    try:
        client = docker.from_env(timeout=10)
        version, info = client.version(), client.info()
        client.close()
    except docker.errors.DockerException as exc:
        return EngineStatus(False, error=str(exc))
    return EngineStatus(True, version.get("Version", "?"), version.get("ApiVersion", "?"),
                        storage=str(info.get("Driver", "?")), disk_limits=quota_supported(info))  # fmt: skip


_CLIENT_LOCK = threading.Lock()


def docker_client() -> docker.DockerClient:
    """A client of the engine DOCKER_HOST names (default: the local socket). One per process, even when the first
    sandboxes start from several worker threads at once."""
    with _CLIENT_LOCK:
        return _connect()


@functools.cache
def _connect() -> docker.DockerClient:
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


def _is_btrfs_mount(path: Path) -> bool:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return any(line.split()[1:3] == [str(path), "btrfs"] for line in mounts)


@dataclass(frozen=True)
class QuotaDataRoot:
    """A btrfs filesystem with quotas on, in a sparse file loop-mounted at `root`: a data root on which dockerd's
    btrfs driver can cap what each container writes."""

    root: Path = DATA_ROOT
    image: Path = DATA_IMAGE
    max_bytes: int = DATA_IMAGE_MAX

    def image_size(self) -> int:
        # The file is sparse; its apparent size stays below the host's free space, so that the engine's own
        # filesystem fills up (the sandbox sees ENOSPC) before the host's does.
        free = shutil.disk_usage(self.image.parent).free
        return min(self.max_bytes, int(free * 0.8)) // 4096 * 4096

    def mount(self) -> str:
        """Mount it, creating it the first time. Returns "" when done, else why it could not be done."""
        steps: list[list[str]] = []
        if not _is_btrfs_mount(self.root):
            if not self.image.exists():
                steps += [["truncate", "-s", str(self.image_size()), str(self.image)],
                          ["mkfs.btrfs", "-q", str(self.image)]]  # fmt: skip
            # discard: space that containers free goes back to the host, so the sparse file shrinks again
            steps.append(["mount", "-o", "loop,discard=async", str(self.image), str(self.root)])
        steps.append(["btrfs", "quota", "enable", str(self.root)])
        self.root.mkdir(parents=True, exist_ok=True)
        for argv in steps:
            try:
                done = subprocess.run(argv, capture_output=True, text=True)
            except OSError as exc:
                return f"`{' '.join(argv)}`: {exc}"
            if done.returncode != 0:
                return f"`{' '.join(argv)}` failed: {done.stderr.strip()[-300:]}"
        return ""

    def dockerd_args(self) -> list[str]:
        return ["--data-root", str(self.root), "--storage-driver", "btrfs"]


def dockerd_argv(disk_quota: bool, log: Callable[[str], None]) -> list[str]:
    """dockerd's command line: with `disk_quota`, on the btrfs data root where it can be mounted; else (or where it
    cannot) on dockerd's defaults."""
    argv = ["dockerd", "--iptables=false"]
    if not disk_quota:
        return argv
    data_root = QuotaDataRoot()
    why_not = data_root.mount()
    if why_not:
        log(f"cycleqd: dockerd starts on its default storage, so sandbox disk limits are not enforced: {why_not}\n")
        return argv
    return [*argv, *data_root.dockerd_args()]


def start_dockerd(disk_quota: bool = False) -> None:
    """Start dockerd detached from us (it must outlive this process), logging to DOCKERD_LOG."""
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(DOCKERD_LOG, "ab") as logfile:
        argv = dockerd_argv(disk_quota, lambda line: logfile.write(line.encode()))
        logfile.flush()
        subprocess.Popen(
            argv,
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


def ensure_engine(timeout_s: float = 60.0, disk_quota: bool = False) -> EngineStatus:
    """Make sure an engine answers, installing and starting one if we can (with `disk_quota`, on a btrfs data root
    that can cap each sandbox's writes, at a start-up cost: see the module's docstring). Idempotent and quiet when
    one runs."""
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
            start_dockerd(disk_quota)
            status = wait_for_engine(timeout_s)
    if not status.reachable:
        tail = DOCKERD_LOG.read_text(errors="replace")[-2000:] if DOCKERD_LOG.exists() else ""
        raise EngineUnavailableError(
            f"started dockerd but it did not answer within {timeout_s:.0f} s. Its log ({DOCKERD_LOG}):\n{tail}"
        )
    return status
