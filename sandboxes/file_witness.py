"""Every file a set of processes opens in a container's filesystem, seen by the host's kernel.

A fanotify group on the host marks the container's root filesystem (its overlay superblock, so every mount of it,
the container's own included) for open and exec permission events. The kernel holds each opening process until the
group answers, so the opener is still alive when its capability bounding set is read from /proc: an open is kept
when the opener holds `capability` (sandboxes/agent_caps.py gives it to one-shot execs, the checks, and to nothing
the agent starts), and always answered "allow". Nothing runs inside the container, and no process there can see or
stop the group: it lives in this process, in the host's namespaces.

What it records is the path of the file actually opened, after every symlink was followed, and how (exec'd or
opened): the path is read from the event's descriptor, as the container's root sees it. A name that led there
through a link is not in the event; a caller that needs it compares the links of the layer with what was reached.
An open that failed (no such file, no permission) makes no event either. A folder opened (to list it) is recorded
as opened.

Needs root on the engine's host (CAP_SYS_ADMIN), Linux 5.1+ (exec events, filesystem marks) and a kernel with
fanotify access permissions; `available()` says whether this host has them.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from dataclasses import dataclass, field

from cycleqd.sandboxes.contract import Opened
from cycleqd.sandboxes.errors import WitnessUnavailableError

_FAN_CLOEXEC, _FAN_NONBLOCK, _FAN_CLASS_CONTENT = 0x1, 0x2, 0x4
_FAN_MARK_ADD, _FAN_MARK_FILESYSTEM = 0x1, 0x100
_FAN_OPEN_PERM, _FAN_OPEN_EXEC_PERM = 0x10000, 0x40000
_FAN_Q_OVERFLOW = 0x4000
_FAN_ONDIR = 0x40000000
_FAN_ALLOW = 1
_AT_FDCWD = -100
_EVENT = struct.Struct("IBBHQii")  # struct fanotify_event_metadata
_RESPONSE = struct.Struct("iI")  # struct fanotify_response
_DELETED = " (deleted)"

CAPABILITY_NUMBERS = {"LEASE": 28}


@dataclass
class WitnessLog:
    """What the watched processes opened, each path once (exec'd wins over opened), and whether any open went
    unrecorded (the kernel's queue overflowed, or an opened file could not be named)."""

    opened: dict[str, Opened] = field(default_factory=dict)
    overflowed: bool = False

    def add(self, item: Opened) -> None:
        if item.path not in self.opened or item.executed:
            self.opened[item.path] = item


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    return libc


def _holds(pid: int, bit: int) -> bool:
    """Whether `pid` holds capability `bit` in its bounding set (False once it is gone: a watched process is held by
    the kernel until answered, so only an unwatched one can be gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"CapBnd:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


class FileWitness:
    """Watches the filesystem under `root` (a host path of the container's root, or any path on its filesystem)
    from `start()` to `stop()`, recording the opens of processes that hold `capability`."""

    def __init__(self, root: str, capability: str) -> None:
        self.root = root
        self.bit = CAPABILITY_NUMBERS[capability]
        self.log = WitnessLog()
        self._fd = -1
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        libc = _libc()
        flags = _FAN_CLOEXEC | _FAN_NONBLOCK | _FAN_CLASS_CONTENT
        fd = libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            raise WitnessUnavailableError(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        mask = _FAN_OPEN_PERM | _FAN_OPEN_EXEC_PERM | _FAN_ONDIR
        if libc.fanotify_mark(fd, _FAN_MARK_ADD | _FAN_MARK_FILESYSTEM, mask, _AT_FDCWD, self.root.encode()) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise WitnessUnavailableError(f"fanotify_mark {self.root}: {os.strerror(errno)}")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._serve, name="file-witness", daemon=True)
        self._thread.start()

    def stop(self) -> WitnessLog:
        """Stops watching (every held open is answered first) and returns the log."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1
        return self.log

    def __enter__(self) -> FileWitness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._fd in ready:
                self._drain()
            if self._wake_r in ready:
                self._drain()  # what arrived with the stop is answered too, so no opener stays held
                return

    def _drain(self) -> None:
        while True:
            try:
                buffer = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT.size <= len(buffer):
                length, _version, _, _, mask, fd, pid = _EVENT.unpack_from(buffer, offset)
                offset += length
                if mask & _FAN_Q_OVERFLOW or fd < 0:
                    self.log.overflowed = True
                    continue
                try:
                    if _holds(pid, self.bit):
                        self._record(fd, bool(mask & _FAN_OPEN_EXEC_PERM))
                except OSError:  # an open we cannot name is one we did not see: the log says so
                    self.log.overflowed = True
                finally:
                    os.write(self._fd, _RESPONSE.pack(fd, _FAN_ALLOW))
                    os.close(fd)

    def _record(self, fd: int, executed: bool) -> None:
        info = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(_DELETED) and info.st_nlink == 0:
            path = path[: -len(_DELETED)]
        self.log.add(Opened(path, executed, info.st_mode))
