"""A test instrument: a model "server" in this process that answers from a script after a fixed latency.

It is a `ServerManager` like the real ones, so the orchestrator cannot tell, and it counts what a test asks about
its callers: requests in flight at once, and which ones it failed on purpose (an endpoint error, a server that
died). It stands in for a model where a test's claim is about scheduling, retries or resume; every claim about a
real model (greedy answers, swaps, identities) keeps its test against a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from cycleqd.serving.client import ChatReply, ServedModel, Usage
from cycleqd.serving.errors import EndpointError
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import ModelRef

Messages = Sequence[dict[str, Any]]
# An answer: a text, or (under the tools protocol) an assistant message whose `tool_calls` the server parsed.
Answer = str | dict[str, Any]


class ScriptedModel(ServerManager):
    kind = "scripted"

    def __init__(
        self,
        reply: Callable[[Messages], Answer],
        *,
        latency_s: float = 0.0,
        fail: Callable[[int], type[EndpointError] | None] = lambda _: None,
    ) -> None:
        """`reply(messages)` gives the answer; `fail(n)` may name an error to raise on the n-th request (from 1).
        `asked` keeps every request as it came: its messages and its tools."""
        super().__init__()
        self.reply = reply
        self.latency_s = latency_s
        self.fail = fail
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.failed: list[int] = []
        self.asked: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []

    @property
    def base_url(self) -> str:
        return "scripted://in-process"

    async def start(self) -> None:
        """Nothing to start: the script answers in this process."""

    async def _load(self, ref: ModelRef) -> ServedModel:
        return ServedModel("scripted", ref.identity())

    async def chat(self, messages: Messages, **options: object) -> ChatReply:
        if self.served is None:
            raise EndpointError("no model is being served: call serve() first")
        self.requests += 1
        number = self.requests
        self.asked.append(([dict(m) for m in messages], list(options.get("tools") or [])))  # type: ignore[call-overload]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            error = self.fail(number)
            if error is not None:
                self.failed.append(number)
                raise error(f"request {number} failed (as the test asked)")
            answer = self.reply(messages)
        finally:
            self.in_flight -= 1
        message = {"content": answer} if isinstance(answer, str) else answer
        text, calls = message.get("content") or "", tuple(message.get("tool_calls") or ())
        usage = Usage(sum(len(str(m.get("content") or "").split()) for m in messages), len(text.split()))
        finish = "tool_calls" if calls else "stop"
        return ChatReply(text, finish, usage, self.latency_s, "scripted", self.served.identity, tool_calls=calls)
