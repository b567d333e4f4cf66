"""Sessions on the shell that an idle sandbox's main process keeps running, reached by attaching to the container
instead of by `docker exec`.

An exec costs the engine a runtime process of its own (about 75 ms of CPU on a 2-core host, a fifth of a whole
container lifecycle); an attach costs it a few milliseconds. The main process (IDLE_MAIN) runs one bash at a time on
the container's stdin and stdout, prints SHELL_END with the status when that bash exits, and starts a fresh one.
So a session here is: attach, set up, type commands, then `exit` and wait for SHELL_END, so that the next session
gets a fresh shell as an exec'd one would; a session that cannot end cleanly (the shell no longer reads) retires
the main shell, and later sessions are exec'd.

What this shell is not trusted with: checks. The agent is root in its sandbox and can write to this shell's
output or replace the process; that only ever misleads the agent's own session. Checks run as execs, whose exit
status comes from the engine.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from cycleqd.sandboxes.docker_stream import ExecStream
from cycleqd.sandboxes.shell_session import RESYNC_WAIT_S, BashSession, ProcessHost

_END_A, _END_B = "__CQD", "SHELLEND"  # printed as two words, so the main process's command line never holds it
SHELL_END = _END_A + _END_B
_END = re.compile(rb"\n" + SHELL_END.encode() + rb":(?P<rc>\d+)\n")

# PID 1 of an idle sandbox: a bash that outlives whatever the agent does. The kernel drops every signal that a
# namespace's init has no handler for, so neither `kill 1` nor `kill -9 -1` stops it, and bash reaps the orphans it
# adopts. Its child shell is what blocks on the open, never-written stdin (AgentBench's idle `bash`); killed or
# exited, it is announced and started again (after a failure, with a pause: a shell that cannot start must not
# spin). Under tini the agent could stop its own container (tini forwards `kill 1` to its child and exits with it),
# and a container gone is an environment error, retried: a failure turned into "not counted".
_RESTART_SHELL = f"bash --noprofile --norc; s=$?; printf '\\n%s%s:%s\\n' {_END_A} {_END_B} $s; [ $s = 0 ] || sleep 0.05"
IDLE_MAIN = ["bash", "-c", f"while :; do {_RESTART_SHELL}; done"]


class MainShellSession(BashSession):
    def __init__(
        self,
        host: ProcessHost,
        stream: ExecStream,
        *,
        timeout_s: float,
        cap: int,
        release: Callable[[bool], None],
    ) -> None:
        super().__init__(host, stream, "", timeout_s=timeout_s, cap=cap)
        self._release = release
        self._exit_status: int | None = None
        self._closed = False

    def _shell_end_in(self, pending: bytes) -> re.Match[bytes] | None:
        return _END.search(pending)

    def _shell_exited(self, status: int) -> None:
        super()._shell_exited(status)
        self._exit_status = status

    async def _status_of_ended_shell(self) -> int | None:
        return self._exit_status

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        clean = self._exit_status is not None or (not self._ended and await self._exit_shell())
        self._ended = True
        await self._stream.aclose()
        self._release(clean)

    async def _exit_shell(self) -> bool:
        """Ask the shell to exit and wait for the main process to say it did."""
        deadline = time.monotonic() + RESYNC_WAIT_S
        try:
            await self._stream.write(b"exit\n")
            while not _END.search(bytes(self._pending)):
                frame = await asyncio.wait_for(self._stream.read_frame(), max(0.01, deadline - time.monotonic()))
                if frame is None:
                    return False
                self._keep_tail(frame)
        except (TimeoutError, ConnectionError, OSError):
            return False
        return True
