"""A fourth environment, as a plugin would write one: the model repeats a word, the reply is written into the
sandbox and read back from there, so the score comes out of the sandbox. Registered by the `echo_environment`
fixture (tests/conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd.envs.episode import Episode, EpisodeStatus, Message, Outcome
from cycleqd.envs.registry import EnvironmentBase, Runtime


@dataclass(frozen=True)
class EchoTask:
    task_id: str
    word: str


class EchoEpisode(Episode):
    """Asks the model to repeat a word; the reply is written into the sandbox and read back from there, so the
    score comes out of the real container."""

    def __init__(self, task: EchoTask, sandbox: Any) -> None:
        self.task, self.sandbox, self.echoed = task, sandbox, ""

    async def begin(self) -> list[Message]:
        return [{"role": "user", "content": f"Repeat exactly this word and nothing else: {self.task.word}"}]

    async def step(self, reply: str) -> str | None:
        await self.sandbox.write_file("/tmp/reply.txt", reply)
        self.echoed = (await self.sandbox.exec(["cat", "/tmp/reply.txt"])).stdout
        return None

    async def outcome(self) -> Outcome:
        score = 1.0 if self.task.word.lower() in self.echoed.lower() else 0.0
        return Outcome(EpisodeStatus.COMPLETED, score, 1, answer=self.echoed)


class EchoEnvironment(EnvironmentBase[EchoTask]):
    name = "echo"

    def images(self) -> tuple[str, ...]:
        return ("os-default",)

    def __init__(self, words: tuple[str, ...] = ("banana", "river")) -> None:
        self.words = words

    def builtin_tasks(self, split: str) -> list[EchoTask]:
        return [EchoTask(f"echo-{i}", word) for i, word in enumerate(self.words)]

    def load_tasks(self, path: Path) -> list[EchoTask]:
        return [EchoTask(f"{path.name}#{i}", w) for i, w in enumerate(path.read_text().split())]

    def recognizes(self, record: dict[str, Any], file: Path) -> bool:
        return "echo" in record

    @contextlib.asynccontextmanager
    async def open_episode(self, task: EchoTask, runtime: Runtime) -> AsyncIterator[Episode]:
        async with runtime.sandbox("os-default") as sandbox:
            yield EchoEpisode(task, sandbox)

    def metrics(self, results: Iterable[tuple[EchoTask, float]]) -> dict[str, float]:
        return {"echoed": float(sum(1 for _, score in results if score == 1.0))}
