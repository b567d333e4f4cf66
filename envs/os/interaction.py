"""The AgentBench OS-interaction episode on a sandbox.

Set-up: each `init` script runs as its own process (stdin empty, as an exec runs it), typed into a shell of its
own; `start` is typed into the agent's persistent shell (so what it leaves running, or sets, is there for the
agent); init, the shell and the checks share one working directory, `/`, as AgentBench's containers (no WORKDIR)
and its execs have it. Then up to `round_limit` model replies, each parsed as AgentBench does (envs.os_actions); a
bash action's output is cut for display at 800 characters (first 780 + a note). The episode ends on
answer/finish, an invalid action or the round limit. Under the tools protocol (`OSToolsEpisode`, AgentBench FC) only
the prompt, the reading of a reply (its first tool call) and the form of an observation (a tool result) differ, and a
reply with no usable call is answered and costs its round; after `finish` the answer is its thought, as FC passes it.

Scoring follows AgentBench v0.2: only an episode the agent ended by answering or finishing is judged (an invalid
reply or the round limit scores 0, whatever state the machine is in); after `finish` the answer is None — `match`
fails and check scripts get the text "None". Then `match` or the `check` chain scores it (envs.os_checks).

Who broke it: when a command cannot run, the engine is asked whether the container still stands. Running (the
agent deleted bash, killed its shell's parent) or killed for memory it used: the agent's failure, status
sandbox_broken, score 0. Gone (killed or removed from outside, engine down): EpisodeSetupError, an environment
error the orchestrator retries — never "the output is empty" read by the agent and scored.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from cycleqd.envs.episode import AgentProtocol, Episode, EpisodeStatus, Message, Outcome
from cycleqd.envs.errors import EpisodeSetupError, ScriptUnavailableError
from cycleqd.envs.os.actions import OS_TOOLS, OSAction, parse_os_action, read_os_call
from cycleqd.envs.os.checks import (
    checks_in_container,
    container_sources,
    expected_of,
    match_answer,
    run_checks,
    script_argv,
    script_source,
)
from cycleqd.envs.os.prompt import fc_first_messages, first_messages, observation
from cycleqd.envs.os.tasks import OSTask
from cycleqd.envs.os.trust import PASSWD, Named, TrustJudge, verdict
from cycleqd.envs.tool_calls import ActsByCalls, tool_result
from cycleqd.sandboxes.contract import CommandResult, LayerScan, Sandbox, SandboxHealth, ShellSession
from cycleqd.sandboxes.errors import SandboxError, WitnessUnavailableError
from cycleqd.sandboxes.output import truncate_for_display

HEALTH_SETTLE_S = 3.0  # how long a sandbox may still read as running after it was killed

_WORKDIR_IN_IMAGE: set[tuple[str, str]] = set()  # (image id, folder): folders the image itself holds
_WORKDIR_PROBES: dict[tuple[str, str], asyncio.Future[bool]] = {}  # probes under way, by the same key


@dataclass(frozen=True)
class OSSettings:
    round_limit: int = 5  # CycleQD's setting; AgentBench's own is 8
    workdir: str = "/"
    command_timeout_s: float = 30.0
    check_timeout_s: float = 60.0
    scripts_dir: Path | None = None


class OSInteractionEpisode(Episode):
    def __init__(self, task: OSTask, sandbox: Sandbox, settings: OSSettings | None = None) -> None:
        self.task = task
        self.sandbox = sandbox
        self.settings = settings or OSSettings()
        self.messages: list[Message] = []
        self.rounds = 0
        self.answer: str | None = None
        self.status: EpisodeStatus | None = None
        self._session: ShellSession | None = None
        self._last_timed_out = False
        self.last_output = ""  # the raw output of the last bash action, before display truncation
        self._baseline: LayerScan | None = None  # the writable layer as the set-up left it (envs/os/trust.py)
        self._passwd = ""  # /etc/passwd as the set-up left it
        self._answer_is_text = True  # see OSAction.text

    async def begin(self) -> list[Message]:
        settings = self.settings
        try:
            await self._ensure_workdir()
            for position, script in enumerate(self.task.init):
                result = await self._run_init(script_argv(script, script_source(script, settings.scripts_dir), []))
                if result.exit_code != 0:
                    raise EpisodeSetupError(
                        f"{self.task.task_id}: init script {position} exited {result.exit_code}: {result.output[-300:]}"
                    )
            self._session = await self.sandbox.open_session(workdir=settings.workdir)
            if self.task.start is not None:
                start = script_source(self.task.start, settings.scripts_dir)
                await self._session.run(start, timeout=settings.command_timeout_s)
            if checks_in_container(self.task):
                self._baseline = await self.sandbox.layer()
                self._passwd = await self.sandbox.file_text(PASSWD)
        except (SandboxError, ScriptUnavailableError) as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: {exc}") from exc
        self.messages = self._first_messages()
        return list(self.messages)

    def _first_messages(self) -> list[Message]:
        return first_messages(self.task.description)

    async def _run_init(self, argv: list[str]) -> CommandResult:
        """One init script as its own process, as an exec would run it (stdin empty, a pipe of its own for output,
        so a daemon it leaves cannot write into the agent's shell later), typed into a shell of its own: on Docker
        that shell is the sandbox's main one, reached without an exec. Nothing of the agent runs yet, so its output
        and status can be trusted."""
        session = await self.sandbox.open_session(workdir=self.settings.workdir)
        try:
            typed = f"set -o pipefail; {shlex.join(argv)} </dev/null 2>&1 | cat"
            return await session.run(typed, timeout=self.settings.check_timeout_s)
        finally:
            await session.close()

    async def _ensure_workdir(self) -> None:
        # A fresh container of an image has that image's filesystem, so once a folder is seen in an image it is
        # in every later container of it: one exec per image and run instead of one per episode. Episodes that
        # start together wait for the first one's probe rather than each probing (a herd of execs at a run's start).
        if self.settings.workdir == "/":  # AgentBench's, and every filesystem's
            return
        image = getattr(self.sandbox, "image_id", "")
        key = (image, self.settings.workdir)
        if not image:
            await self._make_workdir()
            return
        while key not in _WORKDIR_IN_IMAGE:
            probe = _WORKDIR_PROBES.get(key)
            if probe is None or probe.done() or probe.get_loop() is not asyncio.get_running_loop():
                probe = _WORKDIR_PROBES[key] = asyncio.ensure_future(self._make_workdir())
                try:
                    if await probe:
                        _WORKDIR_IN_IMAGE.add(key)
                finally:
                    _WORKDIR_PROBES.pop(key, None)
                return
            try:
                in_image = await asyncio.shield(probe)
            except SandboxError:
                continue  # that episode's sandbox failed, not the image: probe again, maybe in ours
            if not in_image:  # each sandbox makes its own
                await self._make_workdir()
                return

    async def _make_workdir(self) -> bool:
        """Whether the image already had the workdir (if not, it is made in this sandbox)."""
        if (await self.sandbox.exec(["test", "-d", self.settings.workdir])).exit_code == 0:
            return True
        await self.sandbox.exec(["mkdir", "-p", self.settings.workdir])
        return False

    async def step(self, reply: str) -> str | None:
        if self.status is not None:
            raise RuntimeError("step() after the episode ended")
        self.rounds += 1
        self.messages.append({"role": "assistant", "content": reply})
        shown = await self._perform(parse_os_action(reply))
        if shown is None or self._out_of_rounds(timed_out=self._last_timed_out):
            return None
        self.messages.append({"role": "user", "content": shown})
        return shown

    async def _perform(self, action: OSAction) -> str | None:
        """What the model is shown after the action, or None when the action ended the episode."""
        if action.kind == "invalid":
            self.status = EpisodeStatus.INVALID_ACTION
            return None
        if action.kind in ("answer", "finish"):
            self.answer, self._answer_is_text = action.content, action.text
            self.status = EpisodeStatus.COMPLETED
            return None
        output = "" if action.content is None else await self._run_bash(action.content)
        if output is None:
            self.status = EpisodeStatus.SANDBOX_BROKEN
            return None
        return observation(truncate_for_display(output))

    def _out_of_rounds(self, *, timed_out: bool) -> bool:
        """Whether the round just played was the last; if so the episode ends on it (nothing shown), as a command
        timeout where that round's command timed out."""
        if self.rounds < self.settings.round_limit:
            return False
        self.status = EpisodeStatus.COMMAND_TIMEOUT if timed_out else EpisodeStatus.ROUND_LIMIT
        return True

    async def _run_bash(self, command: str) -> str | None:
        """The command's output, or None when the agent has broken its sandbox."""
        try:
            if self._session is None:
                self._session = await self.sandbox.open_session(workdir=self.settings.workdir)
            result = await self._session.run(command, timeout=self.settings.command_timeout_s)
        except SandboxError as exc:
            await self._blame(exc)
            return None
        self._last_timed_out = result.timed_out
        self.last_output = result.output
        if result.session_ended:  # `exit`, or the container died under the command: ask the engine which
            self._session = None
            await self._blame(None)
        return result.output

    async def _blame(self, cause: SandboxError | None) -> None:
        """Raise EpisodeSetupError unless the sandbox still stands, or its end was the agent's doing (its memory
        use, or its main process ended from inside: ptrace lets a root agent end it)."""
        try:
            health = await self._settled_health()
        except SandboxError as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: the engine failed during the episode: {exc}") from exc
        if health == SandboxHealth.GONE:
            raise EpisodeSetupError(f"{self.task.task_id}: the sandbox died under the agent ({cause or 'no cause'})")

    async def _settled_health(self) -> SandboxHealth:
        # A killed container's exec streams close before the engine records its exit, so a RUNNING right after the
        # session died may be stale: ask again for a moment before blaming the agent.
        deadline = time.monotonic() + HEALTH_SETTLE_S
        health = await self.sandbox.health()
        while health == SandboxHealth.RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            health = await self.sandbox.health()
        return health

    async def _judged_checks(self) -> tuple[bool, str, list[str]]:
        """The check chain's verdict and, for a pass whose checks ran in the container, what voids it: the checks
        run with every process of the agent stopped and their opens witnessed (envs/os/trust.py)."""
        settings = self.settings

        async def checks() -> tuple[bool, str]:
            return await run_checks(
                self.task,
                str(self.answer),  # "None" after finish, as AgentBench passes it
                self.sandbox,
                scripts_dir=settings.scripts_dir,
                workdir=settings.workdir,
                timeout_s=settings.check_timeout_s,
            )

        if self._baseline is None:  # nothing runs in the container: native comparators on the host
            return (*await checks(), [])
        async with self.sandbox.witness_checks() as evidence:
            stopped = await self.sandbox.layer()  # the agent's last state: what the checks write after is theirs
            passed, detail = await checks()
        if not passed:  # a failed check scores 0 whatever the agent changed
            return passed, detail, []
        named = Named.from_sources(container_sources(self.task, settings.scripts_dir), settings.workdir)
        question = any(check is None for check in self.task.checks)  # the example answers about the set-up's machine
        judge = TrustJudge(self.sandbox, named, self._passwd, question=question)
        return passed, detail, await judge.untrusted(self._baseline, stopped, evidence, await self.sandbox.layer())

    async def outcome(self) -> Outcome:
        if self.status is None:
            raise RuntimeError("outcome() before the episode ended")
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.status != EpisodeStatus.COMPLETED:  # AgentBench judges only an answer or a finish
            return Outcome(
                self.status, 0.0, self.rounds, self.answer, f"not judged: {self.status}", expected_of(self.task)
            )
        if self.task.match is not None:
            passed = self.answer is not None and self._answer_is_text and match_answer(self.task.match, self.answer)
            detail = "" if passed else f"answer {self.answer!r} does not match"
        else:
            try:
                passed, detail, untrusted = await self._judged_checks()
                if untrusted:
                    return Outcome(EpisodeStatus.TAMPERED, 0.0, self.rounds, self.answer, verdict(untrusted),
                                   expected_of(self.task))  # fmt: skip
            except WitnessUnavailableError as exc:
                raise EpisodeSetupError(f"{self.task.task_id}: checking failed: {exc}") from exc
            except ScriptUnavailableError as exc:
                raise EpisodeSetupError(f"{self.task.task_id}: checking failed: {exc}") from exc
            except SandboxError as exc:
                await self._blame(exc)
                return Outcome(
                    EpisodeStatus.SANDBOX_BROKEN,
                    0.0,
                    self.rounds,
                    self.answer,
                    f"checks could not run: {exc}",
                    expected_of(self.task),
                )
        return Outcome(self.status, 1.0 if passed else 0.0, self.rounds, self.answer, detail, expected_of(self.task))


class OSToolsEpisode(ActsByCalls, OSInteractionEpisode):
    """The OS episode under AgentBench FC's tools protocol: its prompt and tools, its reading of a reply
    (envs.os_actions.read_os_call) and its answers as tool results; the set-up, the shell, the checks and their
    trust are the text episode's. Every reply is a round, whatever it held (os_interaction/task.py:419); only an
    answer or a finish ends the episode before the round limit."""

    tools = OS_TOOLS

    def _first_messages(self) -> list[Message]:
        return fc_first_messages(self.task.description)

    async def act(self, reply: Message) -> list[Message] | None:
        self._take(reply)
        read = read_os_call(reply)
        if isinstance(read, OSAction):
            shown = await self._perform(read)
            if shown is None:
                return None
            answer = tool_result(read.call_id, shown)
        else:
            answer = read
        if self._out_of_rounds(timed_out=isinstance(read, OSAction) and self._last_timed_out):
            return None
        self.messages.append(answer)
        return [answer]


def os_episode(task: OSTask, sandbox: Sandbox, settings: OSSettings, protocol: AgentProtocol) -> OSInteractionEpisode:
    return (OSToolsEpisode if protocol == AgentProtocol.TOOLS else OSInteractionEpisode)(task, sandbox, settings)
