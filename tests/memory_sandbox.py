"""A test instrument: a sandbox whose file system is a dict and whose programs are Python functions.

It stands in for Docker where a test's claim is about its caller's logic (the pool's bookkeeping, the
orchestrator's scheduling, retries and resume), so that logic is tested in milliseconds. It never stands in where
a claim is about isolation, limits, tampering or scoring: those keep their tests against real containers.
"""

from __future__ import annotations

import asyncio
import itertools
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from cycleqd.sandboxes.contract import CheckEvidence, ExecResult, LayerScan, Sandbox, SandboxHealth, ShellSession
from cycleqd.sandboxes.errors import SandboxError, SandboxStoppedError
from cycleqd.sandboxes.limits import SandboxLimits

# A program gets its sandbox and argv (argv[0] is its name) and returns (exit code, stdout).
Program = Callable[["MemorySandbox", list[str]], Awaitable[tuple[int, str]]]


async def cat(box: MemorySandbox, argv: list[str]) -> tuple[int, str]:
    try:
        return 0, "".join(box.files[path].decode() for path in argv[1:])
    except KeyError as missing:
        return 1, f"cat: {missing.args[0]}: No such file or directory\n"


async def echo(box: MemorySandbox, argv: list[str]) -> tuple[int, str]:
    return 0, " ".join(argv[1:]) + "\n"


async def true(box: MemorySandbox, argv: list[str]) -> tuple[int, str]:
    return 0, ""


PROGRAMS: dict[str, Program] = {"cat": cat, "echo": echo, "true": true}
_ids = itertools.count(1)


class MemorySandbox(Sandbox):
    def __init__(self, image: str, programs: Mapping[str, Program] | None = None) -> None:
        self.id = f"memory-{next(_ids)}"
        self.image = image
        self.limits = SandboxLimits()
        self.files: dict[str, bytes] = {}
        self.programs = dict(PROGRAMS if programs is None else programs)
        self.stopped = False

    def _check(self) -> None:
        if self.stopped:
            raise SandboxStoppedError(f"sandbox {self.id} was stopped")

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
        self._check()
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        started = time.monotonic()
        program = self.programs.get(argv[0]) if argv else None
        if program is None:
            return ExecResult(127, "", f"{argv[0] if argv else ''}: command not found\n", time.monotonic() - started)
        code, out = await program(self, argv)
        return ExecResult(code, out, "", time.monotonic() - started)

    async def open_session(
        self, *, user: str | None = None, workdir: str | None = None, env: Mapping[str, str] | None = None
    ) -> ShellSession:
        raise NotImplementedError("the memory sandbox has no shell: tests of sessions run real containers")

    async def write_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        self._check()
        self.files[path] = data.encode() if isinstance(data, str) else bytes(data)

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self._check()
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path][: max_bytes or self.limits.output_cap_bytes]

    async def layer(self) -> LayerScan:
        raise NotImplementedError("the memory sandbox has no image to compare with")

    async def image_files(self, paths: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError("the memory sandbox has no image")

    async def file_text(self, path: str, *, as_built: bool = False) -> str:
        if as_built:
            raise NotImplementedError("the memory sandbox has no image")
        return self.files.get(path, b"").decode(errors="replace")

    async def current_files(self, paths: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError("the memory sandbox has no image to compare with")

    async def resolve(self, path: str) -> str:
        return path  # no links

    def witness_checks(self) -> AbstractAsyncContextManager[CheckEvidence]:
        raise NotImplementedError("the memory sandbox runs no processes to witness")

    async def health(self) -> SandboxHealth:
        return SandboxHealth.GONE if self.stopped else SandboxHealth.RUNNING

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class MemoryStarter:
    """Starts memory sandboxes as the runtime's `SandboxStarter` does Docker ones, and keeps count: each start
    takes `start_s`, and the first `failures` starts raise a SandboxError (an engine that hiccups)."""

    start_s: float = 0.0
    failures: int = 0
    started: list[MemorySandbox] = field(default_factory=list)
    attempts: int = 0

    async def __call__(self, image: str, *, limits: SandboxLimits | None = None, command: list[str] | None = None,
                       mounts: dict[str, str] | None = None) -> Sandbox:  # fmt: skip
        self.attempts += 1
        await asyncio.sleep(self.start_s)
        if self.attempts <= self.failures:
            raise SandboxError(f"start {self.attempts} of {image} failed (as the test asked)")
        box = MemorySandbox(image)
        self.started.append(box)
        return box

    @property
    def live(self) -> int:
        return sum(1 for box in self.started if not box.stopped)
