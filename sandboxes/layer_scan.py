"""What a container changed in its filesystem, read from its overlay2 upper layer on this host: all of it.

The upper layer holds exactly what changed since the image (and nothing else): a written file, a folder whose
entries changed, a whiteout for a deleted path, an opaque folder for one removed and made again. `scan_upper`
walks the whole of it, with nothing cut short: a layer of more than `limit` entries is reported as flooded, which a
caller must treat as a verdict of its own, never as a reason to look at less. Nothing runs inside the container.

Each entry carries a signature (inode, change time in ns, size, mode): the kernel sets the change time on every
write, rename, link or mode change, and no process without the host's clock can set it back, so two scans of the
same container say which entries changed between them without reading their content.

The layer belongs to the agent: nothing here follows a symlink, opens anything but a regular file (opened with
O_NOFOLLOW | O_NONBLOCK, so a FIFO swapped in cannot block us), or reads more than MAX_DIGEST_BYTES of one file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Sequence

from cycleqd.sandboxes.contract import MAX_DIGEST_BYTES, EntryKind, LayerEntry, LayerScan

_OPAQUE = "trusted.overlay.opaque"
TEXT_LIMIT = 1 << 20


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def lower_entry(lower_dirs: Sequence[str], path: str) -> str | None:
    """Where on this host the image's layers (topmost first) hold `path`, or None (absent, or deleted by a layer
    above). A layer's own relative symlinks, such as merged-usr's /bin, are followed within that layer."""
    for lower in lower_dirs:
        host_path = os.path.join(lower, path.lstrip("/"))
        try:
            info = os.lstat(host_path)
        except OSError:
            continue
        return None if _is_whiteout(info) else host_path
    return None


def file_digest(name: str, max_bytes: int = MAX_DIGEST_BYTES, *, dir_fd: int | None = None) -> str:
    """sha256 of a regular file's content, never following a link nor waiting on a FIFO; "" if it is not one."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        digest = hashlib.sha256()
        left = max_bytes
        try:
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                digest.update(chunk)
                left -= len(chunk)
        except OSError as exc:  # a message queue reads as a file that refuses read()
            return f"{info.st_size}:unreadable ({exc.strerror})"
        return f"{info.st_size}:{digest.hexdigest()}"
    finally:
        os.close(fd)


def digest_of(name: str, info: os.stat_result, *, dir_fd: int | None = None) -> str:
    if stat.S_ISLNK(info.st_mode):
        return "-> " + os.readlink(name, dir_fd=dir_fd)
    if stat.S_ISDIR(info.st_mode):
        return "dir"
    if stat.S_ISREG(info.st_mode):
        return file_digest(name, dir_fd=dir_fd)
    return "special"  # a FIFO, socket or device: nothing a program runs


def _open_folder(root_fd: int, path: str) -> int | None:
    """`path`'s folder in the layer, opened one component at a time without following a link (a folder the agent
    swaps for a symlink to the host's / while we walk is refused, not read); None if it is not there."""
    fd = os.dup(root_fd)
    for part in [p for p in path.split("/") if p]:
        try:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = inner
    return fd


def _kind(info: os.stat_result) -> EntryKind:
    if _is_whiteout(info):
        return EntryKind.WHITEOUT
    if stat.S_ISDIR(info.st_mode):
        return EntryKind.DIR
    if stat.S_ISLNK(info.st_mode):
        return EntryKind.LINK
    return EntryKind.FILE if stat.S_ISREG(info.st_mode) else EntryKind.SPECIAL


def _entry(name: str, fd: int, lower_dirs: Sequence[str], path: str) -> LayerEntry | None:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    kind = _kind(info)
    target = os.readlink(name, dir_fd=fd) if kind == EntryKind.LINK else ""
    opaque = False
    if kind == EntryKind.DIR:
        try:
            opaque = os.getxattr(f"/proc/self/fd/{fd}/{name}", _OPAQUE, follow_symlinks=False) == b"y"
        except OSError:
            opaque = False
    lower = lower_entry(lower_dirs, path) if kind != EntryKind.WHITEOUT else None
    return LayerEntry(
        kind=kind,
        signature=(info.st_ino, info.st_ctime_ns, info.st_size, info.st_mode, info.st_uid, info.st_gid),
        in_image=lower is not None,
        target=target,
        opaque=opaque,
        mode=info.st_mode,
        image_mode=os.lstat(lower).st_mode if lower is not None else 0,
    )


def scan_upper(upper: str, lower_dirs: Sequence[str], *, limit: int) -> LayerScan:
    """Every entry of the upper layer by path, or, past `limit` entries, the ones read so far and `flooded`."""
    root = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    entries: dict[str, LayerEntry] = {}
    stack = ["/"]
    try:
        while stack:
            folder = stack.pop()
            if (fd := _open_folder(root, folder)) is None:
                continue
            try:
                for name in os.listdir(fd):
                    path = posixpath.join(folder, name)
                    entry = _entry(name, fd, lower_dirs, path)
                    if entry is None:
                        continue
                    if len(entries) >= limit:
                        return LayerScan(entries, flooded=True)
                    entries[path] = entry
                    if entry.kind == EntryKind.DIR:
                        stack.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(root)
    return LayerScan(entries, flooded=False)


def _upper_read(upper: str, path: str, read: Callable[[str, os.stat_result, int], str]) -> str | None:
    """`read(name, info, folder_fd)` of what the upper layer holds at `path`; "" for a whiteout, None where it holds
    nothing; its folders are opened without following a link."""
    folder, name = posixpath.split(path)
    root = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _open_folder(root, folder)
    finally:
        os.close(root)
    if fd is None:
        return None
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        return "" if _is_whiteout(info) else read(name, info, fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def _text(name: str, info: os.stat_result, fd: int | None) -> str:
    if not stat.S_ISREG(info.st_mode):
        return ""
    handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    try:
        return os.read(handle, TEXT_LIMIT).decode(errors="replace")
    finally:
        os.close(handle)


def layer_text(upper: str | None, lower_dirs: Sequence[str], path: str) -> str:
    """The text of the regular file at `path` (at most TEXT_LIMIT bytes): the upper layer's when `upper` is given
    and holds it, else the image's; "" where there is none."""
    if upper is not None and (found := _upper_read(upper, path, _text)) is not None:
        return found
    lower = lower_entry(lower_dirs, path)
    return "" if lower is None else _text(lower, os.lstat(lower), None)


def upper_digest(upper: str, path: str) -> str:
    """What the upper layer holds at `path` (as `digest_of` says), "" where it holds nothing."""
    return _upper_read(upper, path, lambda name, info, fd: digest_of(name, info, dir_fd=fd)) or ""


MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup


def resolve_in_root(root: str, path: str) -> str:
    """Where `path` leads inside the tree at `root` (a host path such as /proc/PID/root), each link followed one
    component at a time, an absolute target from `root` (never from this host's /); once a component is missing,
    the rest as written. After MAX_LINKS links, the path reached so far."""
    parts = [p for p in path.split("/") if p]
    current, hops = "/", 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, part)
        try:
            info = os.lstat(root.rstrip("/") + candidate)
        except OSError:
            return posixpath.join(candidate, *parts)
        if stat.S_ISLNK(info.st_mode) and hops < MAX_LINKS:
            hops += 1
            target = os.readlink(root.rstrip("/") + candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = "/"
            continue
        current = candidate
    return current
