"""`cycleqd sandbox selfcheck`: start a real sandbox and prove the contract holds on this machine."""

from __future__ import annotations

import time

from cycleqd.diagnostics.checks import Check
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.images import image_tag
from cycleqd.sandboxes.limits import SandboxLimits


async def run_selfcheck(image: str = "os-default") -> list[Check]:
    checks: list[Check] = []
    started = time.monotonic()
    limits = SandboxLimits(command_timeout_s=2.0, output_cap_bytes=64 << 10)
    async with await DockerSandbox.start(image_tag(image), limits=limits) as sandbox:
        checks.append(Check("start", True, f"{sandbox.name} from {image} in {time.monotonic() - started:.2f} s"))

        result = await sandbox.exec("echo out; echo err >&2; exit 7")
        checks.append(
            Check(
                "exec",
                (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n"),
                f"exit {result.exit_code}, stdout {result.stdout!r}, stderr {result.stderr!r}",
            )
        )

        session = await sandbox.open_session()
        await session.run("cd /tmp && x=3")
        kept = await session.run("pwd; echo $x")
        checks.append(
            Check("session state", kept.output == "/tmp\n3\n", f"cwd and variable carried over: {kept.output!r}")
        )

        slow = await session.run("sleep 30")
        after = await session.run("echo alive")
        checks.append(
            Check(
                "command timeout",
                slow.timed_out and after.output == "alive\n",
                f"`sleep 30` cut after {slow.duration_s:.1f} s; the session still answers",
            )
        )

        flood = await session.run("yes")
        checks.append(
            Check(
                "output cap",
                flood.output_truncated and len(flood.output) <= limits.output_cap_bytes,
                f"`yes` stopped at {len(flood.output)} bytes",
            )
        )

        net = await sandbox.exec(["bash", "-c", "ls /sys/class/net"])
        checks.append(Check("no network", net.stdout.split() == ["lo"], f"interfaces: {' '.join(net.stdout.split())}"))
        await session.close()
    return checks
