"""The persistent bash session: commands go in on stdin, each followed by a sentinel line, so every command
returns exactly its own output and exit code.

How it stays exact:
- the shell has no TTY, so there is no prompt, echo or escape sequence to strip; stderr is merged into stdout
  once, at start, so the output interleaves as a terminal shows it;
- each command is sent as one `eval $'…'` line (ANSI-C quoted), so an unbalanced quote or heredoc is a
  syntax error with a status, not a shell waiting for more input;
- the sentinel is printed by whichever shell reads stdin next (after `su - nobody` that is nobody's shell), with
  the command's status and that shell's pid; the text of the sentinel command never contains the sentinel
  itself, so `set -v` cannot fake one;
- on a timeout or an output overflow the descendants of that shell are killed, then a resync marker is sent and
  awaited, in case the killed command had swallowed the sentinel line from stdin.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Protocol, Self

from cycleqd.sandboxes.contract import CommandResult, ShellSession
from cycleqd.sandboxes.docker_stream import ExecStream, Frame
from cycleqd.sandboxes.errors import SessionClosedError
from cycleqd.sandboxes.output import CappedBuffer

RESYNC_WAIT_S = 5.0


def ansi_c_quote(text: str) -> str:
    """Quote `text` as bash's $'…' so that any bytes, newlines included, form one word on one line."""
    out = []
    for byte in text.encode("utf-8"):
        if byte == 0x27:
            out.append("\\'")
        elif byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "$'" + "".join(out) + "'"


class ProcessHost(Protocol):
    """What a session needs from its sandbox backend."""

    async def kill_children(self, pid: int) -> None: ...

    async def new_oom_kills(self) -> int:
        """OOM kills in the sandbox since the previous call."""
        ...

    async def exit_code_of(self, exec_id: str) -> int | None: ...


class BashSession(ShellSession):
    def __init__(self, host: ProcessHost, stream: ExecStream, exec_id: str, *, timeout_s: float, cap: int):
        self._host = host
        self._stream = stream
        self._exec_id = exec_id
        self._timeout_s = timeout_s
        self._cap = cap
        token = secrets.token_hex(8)
        # Two halves printed by one printf: the joined marker never appears in the text we send.
        self._mark_a, self._mark_b = "__CQD" + token[:8], token[8:]
        self._done = re.compile(rb"\n" + (self._mark_a + self._mark_b).encode() + rb":(?P<rc>\d+):(?P<pid>\d+)\n")
        self._pending = bytearray()
        self._ended = False
        self._shell_pid = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls, host: ProcessHost, stream: ExecStream, exec_id: str, *, timeout_s: float, cap: int, workdir: str | None
    ) -> BashSession:
        return await cls(host, stream, exec_id, timeout_s=timeout_s, cap=cap).set_up(workdir)

    async def set_up(self, workdir: str | None) -> Self:
        setup = "exec 2>&1; shopt -s expand_aliases"
        if workdir:
            setup += f"; cd {ansi_c_quote(workdir)}"
        result = await self.run(setup)
        if result.exit_code != 0:
            await self.close()
            raise SessionClosedError(f"the session's shell failed to start: {result.output.strip()!r}")
        return self

    def _sentinel_line(self) -> str:
        return f'printf \'\\n%s%s:%s:%s\\n\' {self._mark_a} {self._mark_b} "$?" "$$"\n'

    async def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        async with self._lock:
            if self._ended:
                raise SessionClosedError("the shell of this session has exited; open a new session")
            started = time.monotonic()
            out = CappedBuffer(self._cap)
            typed = f"eval {ansi_c_quote(command)}\n"
            try:
                await self._stream.write((typed + self._sentinel_line()).encode())
            except (ConnectionError, OSError) as exc:
                self._ended = True
                raise SessionClosedError(f"the session's shell is gone: {exc}") from exc
            limit = self._timeout_s if timeout is None else timeout
            try:
                status = await asyncio.wait_for(self._read_until_done(out), limit)
                timed_out = False
            except TimeoutError:
                status, timed_out = await self._interrupt(out), True
            overflowed = out.overflowed
            if status is None and overflowed:
                status = await self._interrupt(out)
            exit_code = status
            if self._ended and exit_code is None:
                exit_code = await self._status_of_ended_shell()
            oom = exit_code == 137 and not timed_out and not overflowed and await self._oom_happened()
            return CommandResult(
                exit_code=exit_code,
                output=self._without_echo(out.text(), typed),
                duration_s=time.monotonic() - started,
                timed_out=timed_out,
                output_truncated=overflowed,
                oom_killed=oom,
                session_ended=self._ended,
            )

    async def _read_until_done(self, out: CappedBuffer) -> int | None:
        """Move output into `out` until the sentinel; stop early (returning None) once `out` overflows."""
        keep = len(self._mark_a) + len(self._mark_b) + 48  # bytes that may hold the start of a split sentinel
        while True:
            # Match on a copy: groups of a match on a bytearray read the buffer lazily, and we cut it below.
            pending = bytes(self._pending)
            match = self._done.search(pending)
            ended = self._shell_end_in(pending)
            if ended and (match is None or ended.start() < match.start()):
                out.write(pending[: ended.start()])
                del self._pending[: ended.end()]
                self._shell_exited(int(ended["rc"]))
                return None
            if match:
                out.write(bytes(self._pending[: match.start()]))
                del self._pending[: match.end()]
                self._shell_pid = int(match["pid"])
                return int(match["rc"])
            if len(self._pending) > keep:
                out.write(bytes(self._pending[:-keep]))
                del self._pending[:-keep]
            if out.overflowed:
                return None
            frame = await self._stream.read_frame()
            if frame is None:
                self._ended = True
                out.write(bytes(self._pending))
                self._pending.clear()
                return None
            self._pending += frame.data

    async def _interrupt(self, out: CappedBuffer) -> int | None:
        """Kill what the shell is running, then resynchronise on a fresh marker. Returns the command's status
        if its sentinel still came through."""
        if self._ended:
            return None
        if not self._shell_pid:  # never heard from the shell: nothing safe to kill selectively
            await self.close()
            return None
        _, still_open = await self._stream.drain_while(self._host.kill_children(self._shell_pid), self._keep_tail)
        if not still_open:
            self._ended = True
            return None
        resync_a, resync_b = "__CQDR" + secrets.token_hex(4), secrets.token_hex(4)
        resync = re.compile(rb"\n" + (resync_a + resync_b).encode() + rb"\n")
        try:
            await self._stream.write(f"\nprintf '\\n%s%s\\n' {resync_a} {resync_b}\n".encode())
            status = None
            deadline = time.monotonic() + RESYNC_WAIT_S
            while not resync.search(bytes(self._pending)):
                frame = await asyncio.wait_for(self._stream.read_frame(), max(0.01, deadline - time.monotonic()))
                if frame is None:
                    self._ended = True
                    return None
                self._keep_tail(frame)
            pending = bytes(self._pending)
            head, _, tail = pending.partition(resync.search(pending)[0])
            self._pending = bytearray(tail)
            if ended := self._shell_end_in(head):
                self._shell_exited(int(ended["rc"]))
                head = head[: ended.start()]
            match = self._done.search(head)
            if match:
                self._shell_pid = int(match["pid"])
                status = int(match["rc"])
                head = head[: match.start()]
            out.write(head)
            return status
        except (TimeoutError, ConnectionError, OSError):
            # The shell itself no longer answers (e.g. killed, or stuck reading a heredoc): give it up.
            self._ended = True
            await self.close()
            return None

    def _shell_end_in(self, pending: bytes) -> re.Match[bytes] | None:
        """Where the output itself says that the shell has exited (here never: the end of the stream says it)."""
        return None

    def _shell_exited(self, status: int) -> None:
        self._ended = True

    async def _status_of_ended_shell(self) -> int | None:
        return await self._host.exit_code_of(self._exec_id)

    def _without_echo(self, output: str, typed: str) -> str:
        """Under `set -v` bash echoes the lines we type; the command's own echo stays, our wrapping goes."""
        sentinel = self._sentinel_line()
        output = output.removeprefix(typed)
        return output.removesuffix(sentinel)

    def _keep_tail(self, frame: Frame) -> None:
        """Buffer output while a command is being killed; a flood only keeps its tail."""
        self._pending += frame.data
        if len(self._pending) > 4 * self._cap:
            del self._pending[: -self._cap]

    async def _oom_happened(self) -> bool:
        return await self._host.new_oom_kills() > 0

    async def close(self) -> None:
        self._ended = True
        await self._stream.aclose()
