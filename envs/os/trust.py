"""Whether a passing check chain can be trusted: what the checks reached, against what the agent changed.

AgentBench's check scripts (and the `example` a null check runs) run inside the agent's container, where the agent
is root, knows this source, may leave processes behind and may change any file, account or setting. No list of
places a check might read can be complete (four rounds of attacks found new ones each time), so none is kept:

1. Nothing of the agent runs while its checks run. Every process in the sandbox is stopped (SIGSTOP from the host,
   repeated until none runs) before the first check starts: no swap while they run, no daemon answering them, no
   trace of them.
2. What the checks reached is witnessed by the kernel, from the host: every file their processes executed, mapped
   or opened, after every link was followed (sandboxes/file_witness.py; an agent process holds one capability
   fewer, so none can pass for a check).
3. What the agent changed is read, completely, from the container's writable layer: every entry that differs from
   the one the task's set-up left (its signature: inode, change time, size, mode, owner), and every entry of the
   other writable mounts (/dev, /dev/shm, the bound /etc/hosts), where opens are not witnessed.

A passing chain is voided (`tampered`, score 0, each reach named in the verdict) when a check reached, or may have
reached, something the agent changed that the task's checks do not name as the task's state:
- a file the agent wrote or made that a check opened or executed, unless its content is the image's own at that
  path (a chmod or chown copies a file without changing it);
- a link the agent made or changed that leads to a file or folder a check reached (a name the kernel followed
  without an event);
- a path of the image the agent deleted, replaced with a link, or stripped of read, write or execute permissions
  (a check looking for a program or a setting then finds nothing, fails to run it, and may pass for it: `! grep`),
  a FIFO, socket or device the agent made (their opens make no event), any change on the other mounts;
- more changes than the scan may list, or a process that would not stop, or events the kernel dropped.

What the agent changed is read once every process of it has stopped, before the first check: what the checks then
write (a temporary file, a compiled module) is theirs.

A chain that runs the task's `example` (a null check: AgentBench's questions, "how many lines has /tmp/log?") asks
about the machine, and the agent owns nothing the example reads: a file of the agent's that the example read, named
or not, voids the pass (answering 7 and appending lines until the example counts 7 changes the question, not the
answer), unless the example wrote it itself before reading it. Folders the example lists are not judged: many of
AgentBench's examples make what they then count (`mkdir -p` a tree the agent was asked to make, then `find | wc`),
and the agent's entries there cannot be told from the example's own.

Otherwise, what stays the task's state, because the task is about it:
- what the check's own text names: an absolute path (or `~/`, `$HOME/` for root), a relative one from the
  checks' working folder, a glob; a folder it names covers what lies below it (never `/`, and for a deletion
  never a folder on the image's PATH nor one above it);
- a new command: a program executed from a PATH folder where no PATH folder of the image has that name, named as a
  word by the check ("create a command `hello`");
- the account database (passwd, group, shadow, gshadow), whose users and groups AgentBench's tasks create; a user
  the agent added or changed must have a login shell that the image's /etc/shells lists (not /bin/true, not a
  script) and, unless it is root, a user id other than 0;
- a user's start-up file (`.profile`, `.bashrc`, ...) whose content is the image's /etc/skel copy: `useradd -m`
  writes them; what they lead to (a ~/bin on PATH) is witnessed in turn.
"""

from __future__ import annotations

import posixpath
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from cycleqd.sandboxes.contract import CheckEvidence, EntryKind, LayerEntry, LayerScan, Opened, Sandbox
from cycleqd.sandboxes.images import IMAGE_ENV

# Python adds the working folder (or a script's folder) to its import path and reads the user's site folder; the
# witness would void a check that imported a `json.py` the agent left in `/`, and these keep an honest python check
# from reaching one at all.
CHECK_ENV = {"PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}

PATH_DIRS = tuple(IMAGE_ENV["PATH"].split(":"))  # the checks' PATH: every exec gets the image's environment
ACCOUNTS = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
PASSWD, SHELLS, SKEL = "/etc/passwd", "/etc/shells", "/etc/skel"
CHECK_HOME = "/root"  # the checks run as root with the image's environment
HOME_CONFIG = ("/root/.*", "/home/*/.*")  # a user's hidden files and folders, and all below them
SHOWN = 6  # reaches named in a verdict

_PATH = re.compile(r"(?:~|\$HOME|\$\{HOME\})?/[\w.+\-@%:*?\[\]/]*|~[a-z_][\w-]*/[\w.+\-@%:*?\[\]/]*")
_WORD = re.compile(r"[\w.+\-]+")


@dataclass(frozen=True)
class Named:
    """What a check chain's text names: paths (globs allowed) and words."""

    paths: tuple[str, ...]
    words: frozenset[str]

    @classmethod
    def from_sources(cls, sources: Iterable[str], workdir: str) -> Named:
        paths, words = [], set()
        for source in sources:
            for token in _PATH.findall(source):
                paths.append(_absolute(token, workdir))
            for word in _WORD.findall(source):
                words.add(word)
                paths.append(posixpath.join(workdir, word))
        return cls(tuple(dict.fromkeys(p.rstrip("/") or "/" for p in paths)), frozenset(words))

    def names(self, path: str, *, keep_out: Iterable[str] = (), folders: bool = True) -> bool:
        """Whether `path` is named, or (with `folders`) lies below a named folder other than / and those in
        `keep_out`, unless it is a home's hidden file or folder: programs read their users' configuration there
        unasked (.profile, .gitconfig, .config/), and naming the home does not name it."""
        shut = {"/", *keep_out}
        for named in self.paths:
            if fnmatchcase(path, named):
                return True
            if not folders:
                continue
            if named not in shut and path.startswith(named + "/") and not _home_config(path):
                return True
            if any(c in named for c in "*?[") and _below_glob(path, named, shut) and not _home_config(path):
                return True
        return False


def _home_config(path: str) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in HOME_CONFIG)


def _below_glob(path: str, pattern: str, shut: set[str]) -> bool:
    parent = path
    while parent not in ("/", ""):
        parent = posixpath.dirname(parent)
        if parent not in shut and fnmatchcase(parent, pattern):
            return True
    return False


def _absolute(token: str, workdir: str) -> str:
    for home in ("${HOME}", "$HOME", "~"):
        if token.startswith(home + "/") or token == home:
            return CHECK_HOME + token[len(home) :]
    if token.startswith("~"):  # ~user/...
        user, _, rest = token[1:].partition("/")
        return f"/home/{user}/{rest}"
    return posixpath.normpath(posixpath.join(workdir, token))


def _ancestors(paths: Iterable[str]) -> set[str]:
    found = set()
    for path in paths:
        while path not in ("/", ""):
            found.add(path)
            path = posixpath.dirname(path)
    return found


def _lost_permissions(entry: LayerEntry) -> int:
    """The read, write and execute bits the image gave this path and it no longer has."""
    if entry.kind not in (EntryKind.FILE, EntryKind.DIR) or not entry.in_image:
        return 0
    return entry.image_mode & 0o777 & ~entry.mode


def changed_since(baseline: LayerScan, now: LayerScan) -> tuple[dict[str, LayerEntry], list[str]]:
    """The writable layer's entries that differ from the set-up's (folders left out: what changed below them is
    listed itself), and the changes on the other mounts ("changed /dev/null")."""
    layer = {
        path: entry
        for path, entry in now.entries.items()
        if entry.kind != EntryKind.DIR and baseline.entries.get(path) != entry
    }
    layer |= {  # a folder removed and made again hides the image's entries below it; one made unreadable, too
        path: entry
        for path, entry in now.entries.items()
        if entry.kind == EntryKind.DIR
        and (entry.opaque and entry.in_image or _lost_permissions(entry))
        and baseline.entries.get(path) != entry
    }
    other = [
        f"{'changed' if path in baseline.unwatched else 'made'} {path}"
        for path, entry in now.unwatched.items()
        if baseline.unwatched.get(path) != entry
    ] + [f"deleted {path}" for path in baseline.unwatched if path not in now.unwatched]
    return layer, sorted(other)


class TrustJudge:
    """Decides, for one episode, which of the agent's changes the checks reached and the task does not own."""

    def __init__(self, sandbox: Sandbox, named: Named, passwd_before: str, *, question: bool = False) -> None:
        """`question`: the chain runs the task's example, which answers a question about the machine as the set-up
        left it; then the agent owns nothing the example reaches, not even what it names (an agent that adds a file
        to the folder the example counts changed the question, not the answer)."""
        self.sandbox = sandbox
        self.named = named
        self.passwd_before = passwd_before
        self.question = question
        self._image_folders: set[str] = set()
        self._rewritten: set[str] = set()
        self._set_up: set[str] = set()  # the paths the set-up left in the layer

    def _names(self, path: str) -> bool:
        """Named exactly, or below a named folder that the image does not have: a folder of the image (/usr, /etc)
        holds what every program reads, so only a folder the task made covers what lies below it."""
        return not self.question and self.named.names(path, keep_out=self._image_folders)

    async def untrusted(
        self, baseline: LayerScan, now: LayerScan, evidence: CheckEvidence, after: LayerScan | None = None
    ) -> list[str]:
        """What voids a passing chain, each in words ("the check ran /usr/bin/grep, which the agent changed").
        `now`: the layer once the agent was stopped, before the first check (what the checks then write is theirs);
        `after`: once they ran (a file an example rewrote before reading it holds what the example wrote)."""
        self._set_up = set(baseline.entries)
        self._rewritten = {path for path, entry in (after or now).entries.items() if entry != now.entries.get(path)} | {
            path for path in now.entries if after is not None and path not in after.entries
        }
        if not evidence.complete:
            return [f"the checks could not be watched: {evidence.why_incomplete}"]
        if now.flooded:
            return [f"the agent changed more than {len(now.entries)} paths, more than can be accounted for"]
        changed, other = changed_since(baseline, now)
        listed = await self.sandbox.image_files(self.named.paths)
        self._image_folders = {path for path, digest in listed.items() if digest == "dir"}
        found = [f"{line}, where a check's reads are not witnessed" for line in other if not self._names_line(line)]
        found += await self._opened(changed, evidence.opened)
        found += await self._links(changed, evidence.opened)
        found += self._unseen(changed)
        return found

    def _names_line(self, line: str) -> bool:
        return self._names(line.split(" ", 1)[1])

    async def _opened(self, changed: dict[str, LayerEntry], opened: dict[str, Opened]) -> list[str]:
        reached = {path: item for path, item in opened.items() if path in changed}
        if self.question:  # what an example wrote before reading it is the example's
            reached = {path: item for path, item in reached.items() if path not in self._rewritten}
        if not reached:
            return []
        skel_paths = {f"{SKEL}/{posixpath.basename(p)}" for p in reached}
        image = await self.sandbox.image_files([*reached, *skel_paths, *self._new_command_twins(reached)])
        current = await self.sandbox.current_files(list(reached))
        found = []
        for path, item in sorted(reached.items()):
            if path in ACCOUNTS and not self.question:  # the task's users and groups; each user's shell, id judged
                if path == PASSWD:
                    found += [f"the check read {PASSWD}, where {bad}" for bad in await self._bad_accounts()]
                continue
            if current.get(path) and current.get(path) == image.get(path):
                continue  # the image's own content: a chmod, a chown, a touch
            if self._owned(path, item, current.get(path, ""), image):
                continue
            verb = "ran" if item.executed else "read"
            made = "changed" if changed[path].in_image or path in self._set_up else "made"
            kind = "" if stat.S_ISREG(item.mode) else " (not a regular file)"
            found.append(f"the check {verb} {path}{kind}, which the agent {made}")
        return found

    def _owned(self, path: str, item: Opened, digest: str, image: dict[str, str]) -> bool:
        if self.question:
            return False
        if item.executed:  # a program runs only where named exactly, or by a name no program of the image has
            return self.named.names(path, folders=False) or self._new_command(path, image)
        if self._names(path):
            return True
        return bool(digest) and digest == image.get(f"{SKEL}/{posixpath.basename(path)}")

    def _new_command(self, path: str, image: dict[str, str]) -> bool:
        """A program the check calls by a name that no PATH folder of the image holds, in a PATH folder or in a
        folder the task made and the check names ("create a command `hello`", "cd /opt/app && ./start.sh")."""
        folder, name = posixpath.split(path)
        if name not in self.named.words or any(f"{d}/{name}" in image for d in PATH_DIRS):
            return False
        return folder in PATH_DIRS or self._names(path)

    @staticmethod
    def _new_command_twins(reached: Iterable[str]) -> list[str]:
        """Where the image's PATH would hold programs of the same names."""
        names = {posixpath.basename(p) for p in reached}
        return [f"{d}/{n}" for d in PATH_DIRS for n in names]

    async def _bad_accounts(self) -> list[str]:
        """The users the agent added or changed whose login shell is not in the image's /etc/shells, or who are
        not root and have user id 0."""
        now = await self.sandbox.file_text(PASSWD)
        before = set(self.passwd_before.splitlines())
        shells = await self._image_shells()
        found = []
        for line in now.splitlines():
            fields = line.split(":")
            if line in before or len(fields) < 7:
                continue
            user, uid, shell = fields[0], fields[2], fields[6]
            if shell and shell not in shells:
                found.append(f"{user}'s login shell {shell} is not one the image's {SHELLS} lists")
            if uid.strip() == "0" and user != "root":
                found.append(f"{user} has user id 0")
        return found

    async def _image_shells(self) -> set[str]:
        text = await self.sandbox.file_text(SHELLS, as_built=True)
        return {line.strip() for line in text.splitlines() if line.strip().startswith("/")}

    async def _links(self, changed: dict[str, LayerEntry], opened: dict[str, Opened]) -> list[str]:
        """Links the agent made or changed that lead to something a check reached."""
        links = [path for path, entry in changed.items() if entry.kind == EntryKind.LINK]
        if not links:
            return []
        reached = set(opened) | _ancestors(opened)
        image = await self.sandbox.image_files(self._new_command_twins(links))
        found = []
        for link in sorted(links):
            target = await self.sandbox.resolve(link)
            if target not in reached:
                continue
            item = opened.get(target)
            executed = item is not None and item.executed
            if self._names(link) or (executed and self._new_command(link, image)):
                continue
            found.append(f"the check reached {target} through {link}, a link the agent made")
        return found

    def _unseen(self, changed: dict[str, LayerEntry]) -> list[str]:
        """What a check's reach of makes no event: a path of the image deleted, replaced by a link, or stripped of
        permissions it had (a failed exec of `grep` under `! grep -q error log` passes), and special files."""
        keep_out = _ancestors(PATH_DIRS)  # naming /usr does not own a deleted /usr/bin/grep

        def owned(path: str) -> bool:
            return not self.question and self.named.names(path, keep_out=keep_out)

        found = []
        for path, entry in sorted(changed.items()):
            lost = _lost_permissions(entry)
            if entry.kind == EntryKind.WHITEOUT or entry.opaque:
                if not owned(path):
                    found.append(f"the agent deleted {path} of the image, which a check may have looked for")
            elif entry.kind == EntryKind.LINK and entry.in_image and not owned(path):
                found.append(f"the agent replaced {path} of the image with a link to {entry.target}")
            elif lost and not owned(path):
                found.append(f"the agent took permissions {lost:o} from {path} of the image")
            elif entry.kind == EntryKind.SPECIAL and not self._names(path):
                found.append(f"the agent made {path}, a FIFO, socket or device whose opens are not witnessed")
        return found


def verdict(lines: list[str]) -> str:
    shown = "; ".join(lines[:SHOWN]) + (f"; and {len(lines) - SHOWN} more" if len(lines) > SHOWN else "")
    return f"tampered: {shown}"
