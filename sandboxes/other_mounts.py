"""What lies on a container's filesystems other than its root: read from the host, to compare two moments.

The file witness (file_witness.py) watches the root filesystem only. Docker also mounts a tmpfs on /dev (and /dev/shm,
/dev/mqueue) and binds three host files (/etc/hosts, /etc/hostname, /etc/resolv.conf); a root agent may write on
all of them, and a check's opens there are not witnessed. So every entry on them is listed with a signature
(inode, size, mode, owner, device number, a file's content digest), and a caller compares two listings: a change
there is one nobody saw being read. Kernel filesystems (proc, sysfs, cgroup, devpts) and mounts below /proc and
/sys are left out: their entries are made by the kernel, not written by the agent.
"""

from __future__ import annotations

import os
import stat

from cycleqd.sandboxes.contract import EntryKind, LayerEntry
from cycleqd.sandboxes.layer_scan import file_digest

KERNEL_FILESYSTEMS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "overlay", "securityfs", "debugfs"}
KERNEL_TREES = ("/proc", "/sys")  # and the mounts below them (Docker's /sys/fs/cgroup scaffold, /proc/keys masks)


def mount_points(init_pid: int) -> tuple[list[str], set[str]]:
    """The container's mount points whose content its processes can write, other than its root; and all of them."""
    points, every = [], set()
    with open(f"/proc/{init_pid}/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            fstype = fields[fields.index("-") + 1]
            every.add(point)
            if point == "/" or point.startswith(KERNEL_TREES) or fstype in KERNEL_FILESYSTEMS:
                continue
            points.append(point)
    return points, every


def _entry(host_path: str, info: os.stat_result) -> LayerEntry:
    """An entry's signature: what it is and, for a file, its content's digest. Not its change time: the engine
    touches the bound host files' metadata while a container runs."""
    target = ""
    if stat.S_ISDIR(info.st_mode):
        kind = EntryKind.DIR
    elif stat.S_ISLNK(info.st_mode):
        kind, target = EntryKind.LINK, os.readlink(host_path)
    else:
        kind = EntryKind.FILE if stat.S_ISREG(info.st_mode) else EntryKind.SPECIAL
    content = file_digest(host_path) if kind == EntryKind.FILE else ""
    signature = (info.st_ino, info.st_size, info.st_mode, info.st_uid, info.st_gid, info.st_rdev)
    return LayerEntry(kind=kind, signature=signature, in_image=False, target=target + content)


def mounted_entries(init_pid: int, *, limit: int) -> tuple[dict[str, LayerEntry], bool]:
    """Every entry on the container's other mounts, by path in the container, and whether `limit` cut it short."""
    root = f"/proc/{init_pid}/root"
    found: dict[str, LayerEntry] = {}
    points, every = mount_points(init_pid)
    stack = list(points)
    while stack:
        path = stack.pop()
        try:
            info = os.lstat(root + path)
        except OSError:
            continue
        if len(found) >= limit:
            return found, True
        found[path] = _entry(root + path, info)
        if stat.S_ISDIR(info.st_mode):
            try:
                names = os.listdir(root + path)
            except OSError:
                continue
            # A mount below this one is listed from its own point, or not at all (/dev/pts is the kernel's).
            stack += [c for c in (f"{path.rstrip('/')}/{n}" for n in names) if c not in every]
    return found, False
