"""Stopping every process of a container from the host, so that nothing it runs acts while its checks run.

SIGSTOP cannot be caught, blocked or ignored, and the host's root may send it to any process. A process that forks
while the stopping goes on leaves a child that the next pass stops; a traced process whose tracer swallows its stop
is stopped again once its tracer is (it then waits in a trace stop for a tracer that cannot run). The passes end
when one finds every process of the container's PID namespace stopped or dead; one that will not stop within the
passes is reported, and the caller must not trust what runs next.
"""

from __future__ import annotations

import os
import signal
import time

PASSES = 50
SETTLE_S = 0.002
_STOPPED = {"T", "t", "Z", "X"}  # stopped, trace-stopped, zombie, dead


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split(b" ", 1)[0].decode()


def namespace_pids(init_pid: int) -> list[int]:
    """The host PIDs of every process in `init_pid`'s PID namespace."""
    try:
        namespace = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                    pids.append(int(name))
            except OSError:
                continue
    return pids


def stop_all(init_pid: int) -> tuple[list[int], list[int]]:
    """Stops every process in `init_pid`'s PID namespace: (the PIDs stopped, those still running after every pass)."""
    stopped: set[int] = set()
    running: list[int] = []
    for _ in range(PASSES):
        running = [pid for pid in namespace_pids(init_pid) if _state(pid) not in _STOPPED and _state(pid) is not None]
        if not running:
            break
        for pid in running:
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
            except ProcessLookupError:
                continue
        time.sleep(SETTLE_S)
    return sorted(stopped), running


def continue_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            continue
