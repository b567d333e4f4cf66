"""The episode contract between an environment and the orchestrator.

    messages = await episode.begin()          # the first messages (chat-completions format)
    while (observation := await episode.step(reply)) is not None:
        ...                                   # append the reply and the observation, ask the model again
    outcome = await episode.outcome()         # score and status, computed once the episode ended

Under the tools protocol (AgentBench FC) the orchestrator calls `act` instead of `step`: it hands over the model's
whole assistant message (its `tool_calls` included) and appends the messages `act` returns (`tool` results, or a
`user` nudge); every request carries the episode's `tools`. A text episode inherits `act`, which is its `step`.

The environment owns prompts, action parsing, limits and scoring. `step` returns None when the episode is
over (an answer, a finish, an invalid action, or the round limit). The one limit it does not own is the episode's
wall-clock time: the orchestrator stops an episode that runs past it (`episode_timeout`) without its `outcome`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# It lives below envs/, so that the evolution's config can check a task's protocol without importing envs/.
from cycleqd.protocols import AgentProtocol as AgentProtocol

# A chat-completions message: role and content, and under the tools protocol an assistant's `tool_calls` or a tool
# result's `tool_call_id`.
Message = dict[str, Any]


class EpisodeStatus(StrEnum):
    COMPLETED = "completed"  # the agent answered or finished
    ROUND_LIMIT = "round_limit"
    # The episode ran past its wall-clock limit (`eval --episode-timeout`): the agent's failure, as the round limit
    # is, scored 0 with its transcript so far; set by the orchestrator, never by an environment.
    EPISODE_TIMEOUT = "episode_timeout"
    INVALID_ACTION = "invalid_action"
    COMMAND_TIMEOUT = "command_timeout"  # a command hit the sandbox's limit; the episode went on
    SANDBOX_BROKEN = "sandbox_broken"  # the agent broke its own sandbox (deleted bash, ate the memory): scored 0
    TAMPERED = "tampered"  # a passing check reached what the agent changed (envs/os/trust.py): 0
    ENV_ERROR = "env_error"  # not the model's failure: retried, never scored


@dataclass(frozen=True)
class Outcome:
    status: EpisodeStatus
    score: float
    rounds: int
    answer: str | None = None
    detail: str = ""
    expected: str = ""  # what the grader compared against (a match answer, a label, a check, the tests), for people
    metrics: dict[str, float] = field(default_factory=dict)


class Episode(abc.ABC):
    # The `tools` array of every request to the model (OpenAI's schema); empty under the text protocol.
    tools: tuple[dict[str, Any], ...] = ()

    @abc.abstractmethod
    async def begin(self) -> list[Message]: ...

    @abc.abstractmethod
    async def step(self, reply: str) -> str | None: ...

    async def act(self, reply: Message) -> list[Message] | None:
        """The model's assistant message in, the messages that answer it out; None: the episode is over. The text
        protocol's is `step` on the reply's text, its observation a user message."""
        observation = await self.step(reply.get("content") or "")
        return None if observation is None else [{"role": "user", "content": observation}]

    @abc.abstractmethod
    async def outcome(self) -> Outcome: ...

    async def close(self) -> None:  # noqa: B027 - a hook: most episodes hold nothing beyond their sandbox
        """Release what the episode holds if it is abandoned before its outcome (idempotent)."""
