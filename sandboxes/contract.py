"""The sandbox contract the environments depend on. Docker is one backend; another can follow without
touching `envs/`.

Limits and failures are part of the contract:
- every command has a wall-clock limit (`SandboxLimits.command_timeout_s` unless a call gives its own); on
  expiry the command and everything it started are killed, the result says `timed_out=True`, and the sandbox
  (and a persistent session) stays usable;
- at most `SandboxLimits.output_cap_bytes` are read from any one output of one command; past that the
  command is killed and the result says `output_truncated=True` (a `yes` cannot eat the host's memory);
- a command killed by the kernel's OOM killer is reported with `oom_killed=True`;
- `SandboxStoppedError` after `stop()`; `SessionClosedError` once a session's shell has exited.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum

from cycleqd.sandboxes.limits import SandboxLimits


@dataclass(frozen=True)
class ExecResult:
    """Outcome of a one-shot command. `exit_code` is None when the command was killed before it reported one."""

    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    output_truncated: bool = False
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.output_truncated or self.oom_killed)


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command typed into a persistent session: stdout and stderr interleaved as a terminal
    shows them, with nothing of ours (prompts, sentinels, escape sequences) mixed in."""

    exit_code: int | None
    output: str
    duration_s: float
    timed_out: bool = False
    output_truncated: bool = False
    oom_killed: bool = False
    session_ended: bool = False


MAX_DIGEST_BYTES = 256 << 20  # a changed file bigger than this is fingerprinted by its size and first bytes


class EntryKind(StrEnum):
    FILE = "file"
    DIR = "dir"
    LINK = "link"
    WHITEOUT = "whiteout"  # the image's path, deleted
    SPECIAL = "special"  # a FIFO, socket or device


@dataclass(frozen=True)
class LayerEntry:
    """One path of a sandbox's writable layer: what is there, whether the image has that path too, and a signature
    (inode, change time, size, mode, owner) that any write, rename, link or mode change alters and nothing inside
    the sandbox can set back."""

    kind: EntryKind
    signature: tuple[int, ...]
    in_image: bool
    target: str = ""  # a link's target
    opaque: bool = False  # a folder removed and made again: nothing of the image's is below it
    mode: int = 0  # its mode bits now
    image_mode: int = 0  # the image's mode bits at this path, where it has one


@dataclass(frozen=True)
class LayerScan:
    """Every path of a sandbox's writable layer, unless `flooded`: there were more than the scan's limit; and every
    entry on its other writable mounts (/dev, /dev/shm, bound host files), where opens are not witnessed."""

    entries: dict[str, LayerEntry]
    flooded: bool
    unwatched: dict[str, LayerEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class Opened:
    """A file a check's process opened, after every link was followed: exec'd, or opened; its file type bits."""

    path: str
    executed: bool
    mode: int


@dataclass
class CheckEvidence:
    """What the checks' processes opened while every other process of the sandbox was stopped. `complete` is False
    when the kernel dropped events or a process of the sandbox would not stop: then nothing may be trusted."""

    opened: dict[str, Opened]
    complete: bool
    why_incomplete: str = ""


class SandboxHealth(StrEnum):
    """Whether a sandbox still stands, asked of the engine (not of anything inside the sandbox)."""

    RUNNING = "running"
    OOM_KILLED = "oom_killed"  # the kernel killed its main process for memory: what ran inside caused it
    # Its main process ended with no stop or kill from the engine: something inside ended it (as root, an agent
    # can, through ptrace).
    ENDED_INSIDE = "ended_inside"
    GONE = "gone"  # stopped, killed or removed from outside


class ShellSession(abc.ABC):
    """A persistent interactive bash: cwd, variables, functions, aliases and the current user (`su`) carry over
    from one command to the next, as in a terminal."""

    @abc.abstractmethod
    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Type `command` (any bash, several lines allowed) and wait for it to finish.

        Raises SessionClosedError if the shell already ended."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Sandbox(abc.ABC):
    """An isolated machine for one episode."""

    limits: SandboxLimits

    @abc.abstractmethod
    async def exec(
        self,
        command: Sequence[str] | str,
        *,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        user: str | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run one command: an argv list as is, a string as a bash script. `stdin` is fed then closed."""

    @abc.abstractmethod
    async def open_session(
        self, *, user: str | None = None, workdir: str | None = None, env: Mapping[str, str] | None = None
    ) -> ShellSession:
        """Start a persistent bash session."""

    @abc.abstractmethod
    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """Create or replace `path` (absolute) with `data`, owned by root; parent folders are created."""

    @abc.abstractmethod
    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The content of `path`; at most `max_bytes` (default: the output cap). FileNotFoundError if absent."""

    @abc.abstractmethod
    async def layer(self) -> LayerScan:
        """Every path where the sandbox's filesystem differs from its image, with nothing cut short (past the
        backend's limit the scan says `flooded`). Read from outside: nothing runs in the sandbox, whose programs the
        agent may have replaced. SandboxError if the backend cannot read it."""

    @abc.abstractmethod
    async def image_files(self, paths: Sequence[str]) -> dict[str, str]:
        """What the sandbox's image holds at those of `paths` it holds (each one's digest: a file's sha256 of at
        most MAX_DIGEST_BYTES with its size, a link's "-> target", "dir"), as built, whatever was done since."""

    @abc.abstractmethod
    async def file_text(self, path: str, *, as_built: bool = False) -> str:
        """The text of the regular file at `path` now (or in the image as built), at most 1 MiB, "" where there is
        none; read from outside, the last component not followed if it is a link."""

    @abc.abstractmethod
    async def current_files(self, paths: Sequence[str]) -> dict[str, str]:
        """What the sandbox holds now at those of `paths` its writable layer holds (digests as `image_files`)."""

    @abc.abstractmethod
    async def resolve(self, path: str) -> str:
        """Where `path` leads in the sandbox, every link followed (absolute ones from the sandbox's root); the
        rest as written once a component is missing."""

    @abc.abstractmethod
    def witness_checks(self) -> AbstractAsyncContextManager[CheckEvidence]:
        """Stops every process in the sandbox, then records, from outside, every file that one-shot `exec`s (the
        checks; never a session's processes) open until the block ends; the evidence is filled in as it ends.
        The sandbox's processes stay stopped: after the checks, only `stop()` is left to call.
        WitnessUnavailableError where this host cannot watch (not root, a remote engine)."""

    @abc.abstractmethod
    async def health(self) -> SandboxHealth:
        """The sandbox's state as the engine reports it. SandboxError if the engine does not answer."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Destroy the sandbox and everything in it. Idempotent."""

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
