"""A test instrument: a model "server" in this process that answers from a script after a fixed latency.

It is a `ServerManager` like the real ones, so the orchestrator cannot tell, and it counts what a test asks about
its callers: requests in flight at once, and which ones it failed on purpose (an endpoint error, a server that
died). It stands in for a model where a test's claim is about scheduling, retries or resume; every claim about a
real model (greedy answers, swaps, identities) keeps its test against a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cycleqd.serving.client import ChatReply, ServedModel, Usage
from cycleqd.serving.errors import EndpointError
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import ModelRef

Messages = Sequence[dict[str, str]]


class ScriptedModel(ServerManager):
    kind = "scripted"

    def __init__(
        self,
        reply: Callable[[Messages], str],
        *,
        latency_s: float = 0.0,
        fail: Callable[[int], type[EndpointError] | None] = lambda _: None,
    ) -> None:
        """`reply(messages)` gives the answer; `fail(n)` may name an error to raise on the n-th request (from 1)."""
        super().__init__()
        self.reply = reply
        self.latency_s = latency_s
        self.fail = fail
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.failed: list[int] = []

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
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            error = self.fail(number)
            if error is not None:
                self.failed.append(number)
                raise error(f"request {number} failed (as the test asked)")
            text = self.reply(messages)
        finally:
            self.in_flight -= 1
        usage = Usage(sum(len(m["content"].split()) for m in messages), len(text.split()))
        return ChatReply(text, "stop", usage, self.latency_s, "scripted", self.served.identity)
