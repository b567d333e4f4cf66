"""Gold replays: an episode driven by a task's gold replies instead of a model, and what one replay found.

Each environment writes its own gold replies (beside it: `os_env.py`, `db_env.py`, `coding_env.py`), as text or as
tool calls after the runtime's protocol; `cycleqd suite verify` reports the verdicts and `cycleqd sft` trains on the
transcripts of those that passed (under the tools protocol: assistant messages with `tool_calls`, `tool` results).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cycleqd.envs.episode import Episode, Message, Outcome


@dataclass
class TaskVerdict:
    task_id: str
    passed: bool | None  # None: not run (unavailable)
    reason: str = ""
    transcript: list[Message] = field(default_factory=list)  # the replay as a model would have seen it
    prompt_messages: int = 0  # the first messages are the env's prompt (one-shot turns included), not replies
    expected: str = ""  # for a failure: what the grader expected, beside the reason
    tools: tuple[dict[str, Any], ...] = ()  # the tools its requests carried (the tools protocol), for SFT data


class RecordedEpisode:
    """An episode whose messages (prompts, gold replies, observations) are kept as a chat transcript."""

    def __init__(self, episode: Episode) -> None:
        self.episode = episode
        self.messages: list[Message] = []
        self.prompt_messages = 0

    async def begin(self) -> list[Message]:
        self.messages = list(await self.episode.begin())
        self.prompt_messages = len(self.messages)
        return self.messages

    async def step(self, reply: str) -> str | None:
        answers = await self.act({"role": "assistant", "content": reply})
        return None if answers is None else answers[0]["content"]

    async def act(self, reply: Message) -> list[Message] | None:
        """One model turn under either protocol (a text reply is an assistant message without calls)."""
        self.messages.append(reply)
        answers = await self.episode.act(reply)
        self.messages.extend(answers or [])
        return answers

    async def outcome(self) -> Outcome:
        return await self.episode.outcome()

    def verdict(self, task_id: str, outcome: Outcome, reason: str) -> TaskVerdict:
        """Passed only with a full score; `reason` says why not."""
        passed = outcome.score == 1.0
        return TaskVerdict(task_id, passed, "" if passed else reason, self.messages, self.prompt_messages,
                           "" if passed else outcome.expected, tuple(self.episode.tools))  # fmt: skip
