"""What the sandbox tests share: short limits, and the one attack that ends a main process from inside."""

from __future__ import annotations

from cycleqd.sandboxes.limits import SandboxLimits

# Short limits keep the timeout tests quick; the defaults are tested on their own.
TEST_LIMITS = SandboxLimits(command_timeout_s=3.0, output_cap_bytes=256 << 10)
# ptrace(PTRACE_ATTACH, 1), wait for the stop, then PTRACE_CONT delivering SIGKILL: as root, the one way in
# from inside to end a main process that ignores every signal, which Docker's default seccomp profile allows.
PTRACE_KILL_PID1 = (
    "python3 -c 'import ctypes, os; libc = ctypes.CDLL(None); libc.ptrace(16, 1, 0, 0); os.waitpid(1, 0); "
    "libc.ptrace(7, 1, 0, 9)'"
)
