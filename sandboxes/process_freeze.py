"""Stopping every process of a container from the host, so that nothing it runs acts while its checks run.

SIGSTOP cannot be caught, blocked or ignored, and the host's root may send it to any process. A process that forks
while the stopping goes on leaves a child that the next pass stops; a traced process whose tracer swallows its stop
is stopped again once its tracer is (it then waits in a trace stop for a tracer that cannot run). The passes end
when one finds every process of the container's PID namespace stopped or dead; one that will not stop within the
passes is reported, and the caller must not trust what runs next. The passes go on for up to PATIENCE_S, each
waiting longer than the last: a process busy in the kernel stops when it next returns to user mode, which on a
loaded host can take a while.
"""

from __future__ import annotations

import os
import signal
import time

PATIENCE_S = 5.0  # a process in the kernel (disk, a loaded host) stops only when it next returns to user mode
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


def has_child(pid: int) -> bool:
    """Whether `pid` has a child process (its stat's fourth field names the parent)."""
    for other in namespace_pids(pid):
        try:
            with open(f"/proc/{other}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2 :].split(b" ")[1]) == pid:
            return True
    return False


def wait_for_child(pid: int, patience_s: float) -> bool:
    """Whether `pid` has a child within `patience_s` (polled: the kernel tells no one of a fork)."""
    deadline = time.monotonic() + patience_s
    while not has_child(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def stop_all(init_pid: int) -> tuple[list[int], list[int]]:
    """Stops every process in `init_pid`'s PID namespace: (the PIDs stopped, those still running after every pass)."""
    stopped: set[int] = set()
    running: list[int] = []
    deadline, pause = time.monotonic() + PATIENCE_S, 0.001
    while True:
        running = [pid for pid in namespace_pids(init_pid) if _state(pid) not in (*_STOPPED, None)]
        if not running or time.monotonic() > deadline:
            return sorted(stopped), running
        for pid in running:
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
            except ProcessLookupError:
                continue
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def describe(pid: int) -> str:
    """ "1234 (bash, D)": a process that would not stop, for the verdict."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            name = handle.read().strip()
    except OSError:
        name = "?"
    return f"{pid} ({name}, {_state(pid) or 'gone'})"
