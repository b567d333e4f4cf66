"""The thin shell wrapper around every one-shot command, and the parsing of what it adds to stderr.

The wrapper prints its pid first, so that a timeout can kill exactly that process tree, then `exec`s the
command: no extra process stays in the container, so what a command sees (`ps`, process counts in task checks)
is what it would see under a plain `docker exec`. The exit status comes from the engine.
"""

from __future__ import annotations

from cycleqd.sandboxes.docker_stream import STDERR, Frame
from cycleqd.sandboxes.output import CappedBuffer

_SCRIPT = 'echo "$$" >&2; exec "$@"'


class WrappedExec:
    def __init__(self, cap: int) -> None:
        self.out = CappedBuffer(cap)
        self.err = CappedBuffer(cap)
        self._announced = bytearray()
        self.pid: int | None = None

    @staticmethod
    def argv(command: list[str]) -> list[str]:
        return ["/bin/sh", "-c", _SCRIPT, "cycleqd-exec", *command]

    def sink(self, frame: Frame) -> None:
        if frame.stream != STDERR:
            self.out.write(frame.data)
        elif self.pid is None:
            self._announced += frame.data
            if b"\n" in self._announced:
                head, _, rest = bytes(self._announced).partition(b"\n")
                self.pid = int(head)
                self.err.write(rest)
        else:
            self.err.write(frame.data)

    @property
    def flooded(self) -> bool:
        return self.out.overflowed or self.err.overflowed
