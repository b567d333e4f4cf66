"""The lifecycle every model server offers the orchestrator: start, serve model X (swap to it if another is
loaded), answer chats stamped with the served model's identity, stop, logs.

A manager that owns a process restarts it when it dies: the request that hit the dead server raises
ServerDiedError (an environment error, retried by the orchestrator, never scored as the model's failure),
and the next request finds the server back with the same model.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from cycleqd.serving.client import ChatClient, ChatReply, ClientSettings, ServedModel
from cycleqd.serving.errors import EndpointError, ServerDiedError
from cycleqd.serving.model_ref import ModelRef
from cycleqd.serving.server_process import ServerProcess
from cycleqd.serving.tool_protocol import ToolSupport

log = logging.getLogger(__name__)


# An interrupted run (Ctrl-C, SIGTERM) ends within seconds: the server holds nothing worth a graceful shutdown,
# and a graceful one waits for the generation in flight (5 s and more on a loaded CPU) before it exits.
INTERRUPTED_STOP_GRACE_S = 0.5


class ServerManager(abc.ABC):
    kind: str = "?"
    stop_grace_s = 10.0  # how long a server process has to exit on SIGTERM before it is SIGKILLed

    def __init__(self, client_settings: ClientSettings | None = None) -> None:
        self.client_settings = client_settings or ClientSettings()
        self._client: ChatClient | None = None
        self.served: ServedModel | None = None
        self.served_ref: ModelRef | None = None
        # How the served model's tool calls are rendered and parsed; None where the server decides alone (an
        # external endpoint, a hub name).
        self.tool_support: ToolSupport | None = None
        self._swap_lock = asyncio.Lock()

    @property
    @abc.abstractmethod
    def base_url(self) -> str: ...

    @property
    def client(self) -> ChatClient:
        if self._client is None:
            self._client = ChatClient(self.base_url, api_key=self._api_key(), settings=self.client_settings)
        return self._client

    def _api_key(self) -> str | None:
        return None

    def decoding(self) -> str:
        """How this server computes (kind, dtype, batching), kept with a run: greedy answers depend on it."""
        return self.kind

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the server (if we own one) and wait until it is healthy."""

    @abc.abstractmethod
    async def _load(self, ref: ModelRef) -> ServedModel:
        """Make the server answer as `ref`, replacing whatever it served; verify it does."""

    async def serve(self, ref: ModelRef) -> ServedModel:
        """Serve `ref`; a no-op if it is already served."""
        async with self._swap_lock:
            if self.served_ref == ref and self.served is not None:
                return self.served
            self.served = None  # until verified, nothing is served: no answer can be stamped stale
            served = await self._load(ref)
            self.served, self.served_ref = served, ref
            return served

    async def chat(self, messages: Sequence[dict[str, Any]], **options: object) -> ChatReply:
        """Answer with the served model. ServerDiedError if the server died under the request."""
        served = self.served
        if served is None:
            raise EndpointError("no model is being served: call serve() first")
        if options.get("tools") and self.tool_support is not None:
            self.tool_support.require()
        try:
            return await self.client.chat(served, messages, **options)  # type: ignore[arg-type]
        except EndpointError as exc:
            if await self._recover_if_dead():
                raise ServerDiedError(f"the {self.kind} server died during a request and was restarted: {exc}") from exc
            raise

    async def _recover_if_dead(self) -> bool:
        """Restart a dead server and reload its model; True if it had died. Managers without a process: False."""
        return False

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def logs(self, lines: int = 200) -> str:
        return ""

    async def __aenter__(self) -> ServerManager:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt)):
            self.stop_grace_s = INTERRUPTED_STOP_GRACE_S
        await self.stop()


class ProcessServerManager(ServerManager):
    """A manager of a server process we start ourselves."""

    health_path = "/health"
    start_timeout_s = 300.0

    def __init__(self, client_settings: ClientSettings | None = None) -> None:
        super().__init__(client_settings)
        self.process: ServerProcess | None = None
        self._restart_lock = asyncio.Lock()
        self.restarts = 0

    @abc.abstractmethod
    def _make_process(self) -> ServerProcess: ...

    @property
    def base_url(self) -> str:
        if self.process is None:
            raise EndpointError(f"the {self.kind} server is not started")
        return f"http://127.0.0.1:{self.process.port}/v1"

    async def start(self) -> None:
        if self.process is not None and self.process.alive:
            return
        self.process = self._make_process()
        self.process.start()
        try:
            await self.process.wait_healthy(
                f"http://127.0.0.1:{self.process.port}{self.health_path}", self.start_timeout_s
            )
        except BaseException:
            self.process.stop()
            raise

    async def _recover_if_dead(self) -> bool:
        async with self._restart_lock:
            if self.process is not None and self.process.alive:
                return False
            log.warning("the %s server died; restarting it. Its log:\n%s", self.kind, self.logs(20))
            ref = self.served_ref
            if self.process is not None:
                self.process.stop()
            await self._restart()
            self.restarts += 1
            if ref is not None:
                self.served = None
                self.served, self.served_ref = await self._load(ref), ref
            return True

    async def _restart(self) -> None:
        """Start a fresh process (on the same port, so clients keep their base URL)."""
        assert self.process is not None
        self.process.start()
        await self.process.wait_healthy(f"http://127.0.0.1:{self.process.port}{self.health_path}", self.start_timeout_s)

    async def stop(self) -> None:
        await super().stop()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop, self.stop_grace_s)
            self.process = None

    def logs(self, lines: int = 200) -> str:
        return self.process.log_tail(lines) if self.process else ""

    def memory_bytes(self) -> int:
        return self.process.rss_bytes() if self.process else 0
