"""The AgentBench OS-interaction episode on a sandbox.

Set-up: each `init` script runs as its own exec; `start` is typed into the agent's persistent shell (so what it
leaves running, or sets, is there for the agent); init, the shell and the checks share one working directory.
Then up to `round_limit` model replies, each parsed as AgentBench does (envs.os_actions); a bash action's output
is cut for display at 800 characters (first 780 + a note). The episode ends on answer/finish, an invalid action
or the round limit; then `match` or the `check` chain scores it (envs.os_checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envs.episode import Episode, EpisodeStatus, Message, Outcome
from envs.errors import EpisodeSetupError, ScriptUnavailableError
from envs.os_actions import parse_os_action
from envs.os_checks import match_answer, run_checks, script_argv, script_source
from envs.os_prompt import first_messages, observation
from envs.os_tasks import OSTask
from sandboxes.contract import Sandbox, ShellSession
from sandboxes.errors import SandboxError
from sandboxes.output import truncate_for_display

_WORKDIR_IN_IMAGE: set[tuple[str, str]] = set()  # (image id, folder): folders the image itself holds


@dataclass(frozen=True)
class OSSettings:
    round_limit: int = 5  # CycleQD's setting; AgentBench's own is 8
    workdir: str = "/root"
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

    async def begin(self) -> list[Message]:
        settings = self.settings
        try:
            await self._ensure_workdir()
            for position, script in enumerate(self.task.init):
                source = script_source(script, settings.scripts_dir)
                result = await self.sandbox.exec(
                    script_argv(script, source, []), workdir=settings.workdir, timeout=settings.check_timeout_s
                )
                if result.exit_code != 0:
                    raise EpisodeSetupError(
                        f"{self.task.task_id}: init script {position} exited {result.exit_code}: "
                        f"{(result.stderr or result.stdout)[-300:]}"
                    )
            self._session = await self.sandbox.open_session(workdir=settings.workdir)
            if self.task.start is not None:
                start = script_source(self.task.start, settings.scripts_dir)
                await self._session.run(start, timeout=settings.command_timeout_s)
        except (SandboxError, ScriptUnavailableError) as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: {exc}") from exc
        self.messages = first_messages(self.task.description)
        return list(self.messages)

    async def _ensure_workdir(self) -> None:
        # A fresh container of an image has that image's filesystem, so once a folder is seen in an image it is
        # in every later container of it: one exec per image and run instead of one per episode.
        image = getattr(self.sandbox, "image_id", "")
        key = (image, self.settings.workdir)
        if image and key in _WORKDIR_IN_IMAGE:
            return
        if (await self.sandbox.exec(["test", "-d", self.settings.workdir])).exit_code != 0:
            await self.sandbox.exec(["mkdir", "-p", self.settings.workdir])
        elif image:
            _WORKDIR_IN_IMAGE.add(key)

    async def step(self, reply: str) -> str | None:
        if self.status is not None:
            raise RuntimeError("step() after the episode ended")
        self.rounds += 1
        self.messages.append({"role": "assistant", "content": reply})
        action = parse_os_action(reply)
        if action.kind == "invalid":
            self.status = EpisodeStatus.INVALID_ACTION
            return None
        if action.kind in ("answer", "finish"):
            self.answer = action.content
            self.status = EpisodeStatus.COMPLETED
            return None
        output = await self._run_bash(action.content or "")
        if self.rounds >= self.settings.round_limit:
            self.status = EpisodeStatus.COMMAND_TIMEOUT if self._last_timed_out else EpisodeStatus.ROUND_LIMIT
            return None
        message = observation(truncate_for_display(output))
        self.messages.append({"role": "user", "content": message})
        return message

    async def _run_bash(self, command: str) -> str:
        try:
            if self._session is None:
                self._session = await self.sandbox.open_session(workdir=self.settings.workdir)
            result = await self._session.run(command, timeout=self.settings.command_timeout_s)
        except SandboxError as exc:
            raise EpisodeSetupError(f"{self.task.task_id}: the sandbox failed during the episode: {exc}") from exc
        self._last_timed_out = result.timed_out
        self.last_output = result.output
        if result.session_ended:  # the agent typed `exit`: a new shell, as a new terminal would be
            self._session = None
        return result.output

    async def outcome(self) -> Outcome:
        if self.status is None:
            raise RuntimeError("outcome() before the episode ended")
        answer = self.answer if self.answer is not None else ""
        if self.task.match is not None:
            passed, detail = match_answer(self.task.match, answer), ""
        else:
            try:
                passed, detail = await run_checks(
                    self.task,
                    answer,
                    self.sandbox,
                    scripts_dir=self.settings.scripts_dir,
                    workdir=self.settings.workdir,
                    timeout_s=self.settings.check_timeout_s,
                )
            except (SandboxError, ScriptUnavailableError) as exc:
                raise EpisodeSetupError(f"{self.task.task_id}: checking failed: {exc}") from exc
        if self._session is not None:
            await self._session.close()
        return Outcome(self.status, 1.0 if passed else 0.0, self.rounds, self.answer, detail)
