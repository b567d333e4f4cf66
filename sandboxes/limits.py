"""Resource limits of a sandbox, with the defaults every episode gets unless configured otherwise."""

from __future__ import annotations

from dataclasses import dataclass, replace

from docker.types import Ulimit


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandbox may use.

    Sandboxes run untrusted model output, so the defaults are tight: no network, 1 GiB of memory (no swap on
    top), 2 CPUs, 256 processes, 30 s of wall clock per command, and at most 1 MiB read from any one output
    stream of one command (bytes beyond the cap are never held in memory; the command is killed).
    """

    network: bool = False
    memory_bytes: int = 1 << 30
    cpus: float = 2.0
    pids: int = 256
    command_timeout_s: float = 30.0
    output_cap_bytes: int = 1 << 20
    # What the sandbox may write. On every engine it caps each file (RLIMIT_FSIZE: a write past it fails, "File size
    # limit exceeded"). The whole writable layer is capped only where the engine's storage driver can (btrfs, zfs,
    # overlay2 on xfs with pquota; writes past it fail with EDQUOT/ENOSPC, the host is untouched): `quota_supported()`
    # says whether this engine can; `cycleqd engine start --disk-quota` starts one that can, at a cost (engine.py).
    disk_bytes: int = 4 << 30
    runtime: str | None = None  # the engine's OCI runtime by name (e.g. "crun"); None: the engine's default

    def __post_init__(self) -> None:
        checks = {
            "memory_bytes": self.memory_bytes >= 16 << 20,
            "cpus": self.cpus > 0,
            "pids": self.pids >= 8,
            "command_timeout_s": self.command_timeout_s > 0,
            "output_cap_bytes": self.output_cap_bytes >= 1024,
            "disk_bytes": self.disk_bytes >= 64 << 20,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"SandboxLimits: invalid {', '.join(bad)} (memory ≥ 16 MiB, cpus > 0, pids ≥ 8, "
                f"timeout > 0, output cap ≥ 1 KiB, disk ≥ 64 MiB); got {self}"
            )

    def with_(self, **changes: object) -> SandboxLimits:
        return replace(self, **changes)  # type: ignore[arg-type]

    def docker_run_kwargs(self, *, disk_quota: bool = False) -> dict[str, object]:
        """The keyword arguments of `docker.containers.run` that enforce these limits; `disk_quota` where the
        engine's storage driver can limit a container's writable layer (see `quota_supported`)."""
        kwargs: dict[str, object] = {
            "network_mode": "bridge" if self.network else "none",
            "mem_limit": self.memory_bytes,
            "memswap_limit": self.memory_bytes,
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids,
            # Costs nothing on any engine, and no process in the sandbox may raise it (no CAP_SYS_RESOURCE).
            "ulimits": [Ulimit(name="fsize", soft=self.disk_bytes, hard=self.disk_bytes)],
        }
        if disk_quota:
            kwargs["storage_opt"] = {"size": str(self.disk_bytes)}
        if self.runtime:
            kwargs["runtime"] = self.runtime
        return kwargs


def quota_supported(info: dict[str, object]) -> bool:
    """Whether an engine (its `docker info`) can give each container a size limit: btrfs and zfs always (btrfs
    needs `btrfs quota enable` on its filesystem), overlay2 only on xfs mounted with pquota — which this project's
    usual hosts (ext4, or a kernel without XFS quota) lack."""
    driver = str(info.get("Driver", ""))
    status = dict(info.get("DriverStatus") or [])  # type: ignore[arg-type]
    return driver in ("btrfs", "zfs") or (driver == "overlay2" and status.get("Backing Filesystem") == "xfs")
