"""A model server running as our child process: a free port, logs kept in a file, a health wait that fails
fast (with the log's tail) if the process dies, and a stop that escalates from SIGTERM to SIGKILL on the whole
process group and waits until it is gone."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from cycleqd.serving.errors import EndpointError, ServerDiedError


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies, so a killed cycleqd leaves no
    model server behind (best effort: other systems simply skip this)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (Linux /proc), 0 if it is gone."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        child = int(entry.name)
        children.setdefault(int(fields.get("PPid", "0").strip() or 0), []).append(child)
        rss[child] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


def group_pids(group: int) -> set[int]:
    """Live (not zombie) processes of a process group (Linux /proc; empty elsewhere)."""
    pids = set()
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp …; comm may hold spaces or parentheses, so split after the last ')'.
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            pids.add(int(entry.parent.name))
    return pids


class ServerProcess:
    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, port: int) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.stopped_pids: set[int] = set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C is ours to handle; the server is stopped explicitly
                preexec_fn=_die_with_parent,
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_healthy(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise ServerDiedError(
                        f"the model server exited (code {self._proc.returncode if self._proc else '?'}) while "
                        f"starting; its log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
        raise EndpointError(
            f"the model server did not answer {url} within {timeout_s:.0f} s; its log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the whole process group (the server and whatever it started: vLLM's engine and workers), then
        SIGKILL what is left after `grace_s`, and return only once no process of the group remains, so that a
        relaunch never meets the old one's GPU memory or port. `stopped_pids` keeps the group's pids."""
        if not self._proc:
            return
        group = self._proc.pid  # start_new_session: the server leads its own group
        self.stopped_pids = group_pids(group) | {group}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace_s
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=grace_s)
            while group_pids(group) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not group_pids(group) and self._proc.poll() is not None:
                break
        self._proc = None

    def rss_bytes(self) -> int:
        return process_tree_rss_bytes(self._proc.pid) if self.alive and self._proc else 0
