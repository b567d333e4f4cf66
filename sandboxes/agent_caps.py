"""The agent's processes hold one capability fewer than the checks' execs, so that none of them can trace a check.

Linux lets a root process ptrace any process of its uid whose capabilities are a subset of its own (there is no
Yama policy inside a container), so a daemon an agent leaves behind can attach to a check as it starts and rewrite
its exit status: no file changes, nothing for a scan of the filesystem to see (tried: a 30-line ctypes tracer turned a
failing check into a pass). So an idle sandbox is given CAP_LEASE (leases on files one does not own: harmless, and
not in Docker's default set, so AgentBench's agent never had it), and everything on the agent's side — the main
process, whose shells run the set-up and the agent's commands, and any exec'd session — starts under `setpriv`,
which drops it from the bounding and inheritable sets for good (no descendant, setuid or not, gets it back).
One-shot execs (the checks) keep it, and the kernel refuses every agent process a trace of a check, its
/proc/<pid>/mem and its file descriptors.
"""

from __future__ import annotations

CHECK_ONLY_CAP = "LEASE"
_DROP = ["setpriv", f"--inh-caps=-{CHECK_ONLY_CAP.lower()}", f"--bounding-set=-{CHECK_ONLY_CAP.lower()}"]


def agent_side(argv: list[str], user: str | None = None) -> list[str]:
    """`argv` started without CHECK_ONLY_CAP, as `user` when given: then the result must be exec'd as root (the
    drop needs root) and takes the user's ids and groups after it. A setpriv or sh the agent replaced to skip the
    drop is itself a change the file witness sees (envs/os/trust.py)."""
    if user in (None, "", "root", "0"):
        return [*_DROP, *argv]
    as_user = (
        f'u=$1; shift; HOME=$(getent passwd "$u" | cut -d: -f6); export HOME; exec {" ".join(_DROP)} --reuid="$u" '
        '--regid="$(id -g "$u")" --init-groups -- "$@"'
    )
    return ["sh", "-c", as_user, "sh", str(user), *argv]
