"""The OS environment (AgentBench's OS interaction) as a registered object, with its gold replies.

Gold replay: the task's `example` script as a bash action, then its output as the answer (or `finish` when the
output spans several lines); a match task without an example answers its expected string. Tasks whose scripts
are not available, that have no gold or whose set-up needs the network are reported apart, not as failures.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from cycleqd.envs.episode import Episode
from cycleqd.envs.errors import EpisodeSetupError, ScriptUnavailableError
from cycleqd.envs.os_checks import check_scripts_available, script_source
from cycleqd.envs.os_interaction import OSInteractionEpisode, OSSettings
from cycleqd.envs.os_tasks import OSTask, load_os_tasks, load_os_tasks_leniently, network_commands
from cycleqd.envs.os_training import explanation_thought
from cycleqd.envs.registry import EnvironmentBase, EpisodeSettings, Runtime
from cycleqd.envs.replay import RecordedEpisode, TaskVerdict


def os_settings(settings: EpisodeSettings) -> OSSettings:
    return OSSettings(round_limit=settings.round_limit, command_timeout_s=settings.command_timeout_s,
                      scripts_dir=settings.scripts_dir)  # fmt: skip


def asks_a_question(task: OSTask) -> bool:
    return task.description.rstrip().endswith("?") or "answer" in task.description.lower()


def gold_replies(task: OSTask, scripts_dir: Path | None) -> list[str] | None:
    """The first gold reply (the rest depends on what the sandbox printed); None if the task has no gold.

    The thought says what a competent agent would think, never "the reference solution": an expert fine-tuned on
    these replies should learn the behaviour, not a phrase that only makes sense in a replay."""
    if task.example is not None:
        source = script_source(task.example, scripts_dir)
        thought = explanation_thought(task.explanation) if task.explanation else (
            "To answer this I need to look at the system, so I run a command that prints what is asked."
            if asks_a_question(task) else "I can do this with a shell command.")  # fmt: skip
        return [f"Think: {thought}\n\nAct: bash\n\n```bash\n{source}\n```"]
    if task.match is not None and task.match.answer is not None:
        return [f"Think: I already know the answer, it is {task.match.answer}.\n\nAct: answer({task.match.answer})"]
    return None


def answer_reply(output: str) -> str:
    text = output.strip()
    if "\n" in text or not text:
        return "Think: The command ran without errors, so the task is done.\n\nAct: finish"
    return f"Think: Now I get the answer, it is {text}.\n\nAct: answer({text})"


class OSEnvironment(EnvironmentBase[OSTask]):
    name = "os"
    gold_format = 2
    gold_rounds = 2  # the bash action, then the answer its output gives

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
            yield OSInteractionEpisode(task, sandbox, os_settings(runtime.settings))

    async def replay_gold(self, task: OSTask, runtime: Runtime) -> TaskVerdict:
        scripts_dir = runtime.settings.scripts_dir
        try:
            check_scripts_available(task, scripts_dir)
            replies = gold_replies(task, scripts_dir)
        except ScriptUnavailableError as exc:
            return TaskVerdict(task.task_id, None, f"unavailable: {exc}")
        if replies is None:
            return TaskVerdict(task.task_id, None, "unavailable: no gold solution (no example, no literal answer)")
        if needs := network_commands(task):
            return TaskVerdict(task.task_id, None, f"unavailable: its set-up needs the network ({', '.join(needs)})")
        async with runtime.sandbox(task.image) as sandbox:
            os_episode = OSInteractionEpisode(task, sandbox, os_settings(runtime.settings))
            episode = RecordedEpisode(os_episode)
            try:
                await episode.begin()
                observation = await episode.step(replies[0])
                if observation is not None:
                    await episode.step(answer_reply(os_episode.last_output))
                outcome = await episode.outcome()
            except EpisodeSetupError as exc:
                return TaskVerdict(task.task_id, False, f"environment error: {exc}")
        return episode.verdict(task.task_id, outcome,
                               f"{outcome.status}: {outcome.detail or f'answer {outcome.answer!r}'}")  # fmt: skip


ENVIRONMENT = OSEnvironment()
