"""The OS environment (AgentBench's OS interaction) as a registered object, with its gold replies.

Gold replay: the task's `example` script as a bash action, then its output as the answer (or `finish` when the
output spans several lines); a match task without an example answers its expected string. Tasks whose scripts
are not available, that have no gold or whose set-up needs the network are reported apart, not as failures.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cycleqd.envs.episode import AgentProtocol, Episode, Message
from cycleqd.envs.errors import EpisodeSetupError, ScriptUnavailableError
from cycleqd.envs.os.checks import check_scripts_available, script_source
from cycleqd.envs.os.interaction import OSSettings, os_episode
from cycleqd.envs.os.tasks import OSTask, load_os_tasks, load_os_tasks_leniently, network_commands
from cycleqd.envs.os.training import explanation_thought
from cycleqd.envs.registry import TEXT_ROUNDS, EnvironmentBase, EpisodeSettings, Runtime
from cycleqd.envs.replay import RecordedEpisode, TaskVerdict
from cycleqd.envs.tool_calls import gold_turn

# Text: CycleQD's 5; tools: AgentBench FC's 8 (configs/tasks/os.yaml:5).
ROUND_LIMITS = MappingProxyType({AgentProtocol.TEXT: TEXT_ROUNDS, AgentProtocol.TOOLS: 8})


def os_settings(settings: EpisodeSettings) -> OSSettings:
    return OSSettings(round_limit=settings.rounds(ROUND_LIMITS), command_timeout_s=settings.command_timeout_s,
                      scripts_dir=settings.scripts_dir)  # fmt: skip


def asks_a_question(task: OSTask) -> bool:
    return task.description.rstrip().endswith("?") or "answer" in task.description.lower()


@dataclass(frozen=True)
class GoldMove:
    """One gold turn, written out per protocol by `message`."""

    thought: str
    kind: str  # bash, answer, finish
    content: str | None = None

    def message(self, protocol: AgentProtocol, turn: int) -> Message:
        act = {"bash": f"bash\n\n```bash\n{self.content}\n```", "answer": f"answer({self.content})"}
        text = f"Think: {self.thought}\n\nAct: {act.get(self.kind, self.kind)}"
        name, argument = {"bash": ("bash_action", "script"), "answer": ("answer_action", "answer"),
                          "finish": ("finish_action", "thought")}[self.kind]  # fmt: skip
        value = self.thought if self.kind == "finish" else self.content
        return gold_turn(protocol, text, self.thought, name, {argument: value}, turn)


def gold_moves(task: OSTask, scripts_dir: Path | None) -> list[GoldMove] | None:
    """The first gold move (the rest depends on what the sandbox printed); None if the task has no gold.

    The thought says what a competent agent would think, never "the reference solution": an expert fine-tuned on
    these replies should learn the behaviour, not a phrase that only makes sense in a replay."""
    if task.example is not None:
        source = script_source(task.example, scripts_dir)
        thought = explanation_thought(task.explanation) if task.explanation else (
            "To answer this I need to look at the system, so I run a command that prints what is asked."
            if asks_a_question(task) else "I can do this with a shell command.")  # fmt: skip
        return [GoldMove(thought, "bash", source)]
    if task.match is not None and task.match.answer is not None:
        return [GoldMove(f"I already know the answer, it is {task.match.answer}.", "answer", task.match.answer)]
    return None


def gold_replies(task: OSTask, scripts_dir: Path | None) -> list[str] | None:
    """The first gold reply as text (v0.2's protocol); None if the task has no gold."""
    moves = gold_moves(task, scripts_dir)
    return None if moves is None else [move.message(AgentProtocol.TEXT, 0)["content"] for move in moves]


def answer_move(output: str) -> GoldMove:
    text = output.strip()
    if "\n" in text or not text:
        return GoldMove("The command ran without errors, so the task is done.", "finish")
    return GoldMove(f"Now I get the answer, it is {text}.", "answer", text)


class OSEnvironment(EnvironmentBase[OSTask]):
    name = "os"
    gold_format = 2
    gold_rounds = 2  # the bash action, then the answer its output gives
    round_limits = ROUND_LIMITS

    def images(self) -> tuple[str, ...]:
        return ("os-default", "os-packages")

    def episode_images(self, tasks: Iterable[OSTask]) -> set[str]:
        return {task.image for task in tasks}

    load_tasks = staticmethod(load_os_tasks)
    load_tasks_leniently = staticmethod(load_os_tasks_leniently)

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        return "description" in record and not ({"table", "entry_point", "test_list"} & set(record))

    def describe(self, task: OSTask) -> str:
        return task.description

    def gold_texts(self, task: OSTask) -> list[str]:
        """The first gold reply: the answer that follows depends on what the sandbox printed (and is short)."""
        try:
            return gold_replies(task, None) or []
        except ScriptUnavailableError:  # its example is a script file this data does not ship: nothing to count
            return []

    @contextlib.asynccontextmanager
    async def open_episode(self, task: OSTask, runtime: Runtime) -> AsyncIterator[Episode]:
        async with runtime.sandbox(task.image) as sandbox:
            yield os_episode(task, sandbox, os_settings(runtime.settings), runtime.settings.protocol)

    async def replay_gold(self, task: OSTask, runtime: Runtime) -> TaskVerdict:
        scripts_dir = runtime.settings.scripts_dir
        try:
            check_scripts_available(task, scripts_dir)
            moves = gold_moves(task, scripts_dir)
        except ScriptUnavailableError as exc:
            return TaskVerdict(task.task_id, None, f"unavailable: {exc}")
        if moves is None:
            return TaskVerdict(task.task_id, None, "unavailable: no gold solution (no example, no literal answer)")
        if needs := network_commands(task):
            return TaskVerdict(task.task_id, None, f"unavailable: its set-up needs the network ({', '.join(needs)})")
        async with runtime.sandbox(task.image) as sandbox:
            protocol = runtime.settings.protocol
            played = os_episode(task, sandbox, os_settings(runtime.settings), protocol)
            episode = RecordedEpisode(played)
            try:
                await episode.begin()
                if await episode.act(moves[0].message(protocol, 0)) is not None:
                    await episode.act(answer_move(played.last_output).message(protocol, 1))
                outcome = await episode.outcome()
            except EpisodeSetupError as exc:
                return TaskVerdict(task.task_id, False, f"environment error: {exc}")
        return episode.verdict(task.task_id, outcome,
                               f"{outcome.status}: {outcome.detail or f'answer {outcome.answer!r}'}")  # fmt: skip


ENVIRONMENT = OSEnvironment()
