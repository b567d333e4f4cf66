"""An async client of any OpenAI-compatible chat-completions endpoint.

It speaks only the public schema (POST {base}/chat/completions, GET {base}/models); everything server-specific
lives in the server managers. Per endpoint: a concurrency limit, connect/read timeouts, and retries with
exponential backoff on connection errors, 5xx and 429. Decoding is greedy unless asked otherwise.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from cycleqd.serving.errors import EndpointError, UnknownModelError

RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ServedModel:
    """What to put in a request's `model` field, and the identity to stamp on its answers."""

    name: str
    identity: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str
    usage: Usage
    latency_s: float
    model: str  # as the server named it
    identity: str  # the content hash (or other identity) of the model that produced this answer
    attempts: int = 1
    # The reply's `tool_calls` as the server parsed them (OpenAI's schema: id, type, function.name and
    # function.arguments, a JSON text that may be malformed); empty where no tools were offered or none was called.
    tool_calls: tuple[dict[str, Any], ...] = ()

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation, as the chat-completions API takes it back."""
        if not self.tool_calls:
            return {"role": "assistant", "content": self.text}
        return {"role": "assistant", "content": self.text, "tool_calls": [dict(call) for call in self.tool_calls]}


@dataclass(frozen=True)
class ClientSettings:
    max_concurrency: int = 8
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    extra_headers: dict[str, str] = field(default_factory=dict)


class ChatClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, settings: ClientSettings | None = None) -> None:
        """`base_url` ends before /chat/completions, e.g. http://127.0.0.1:8000/v1."""
        self.base_url = base_url.rstrip("/")
        self.settings = settings or ClientSettings()
        headers = {"Content-Type": "application/json", **self.settings.extra_headers}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(self.settings.read_timeout_s, connect=self.settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=self.settings.max_concurrency, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits)
        self._slots = asyncio.Semaphore(self.settings.max_concurrency)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def list_models(self) -> list[str]:
        response = await self._request("GET", "/models", None)
        data = self._json(response, "/models")
        try:
            return [entry["id"] for entry in data["data"]]
        except (KeyError, TypeError) as exc:
            raise EndpointError(f"{self.base_url}/models: not an OpenAI model list: {str(data)[:300]}") from exc

    async def chat(
        self,
        model: ServedModel,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int = 512,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> ChatReply:
        body: dict[str, object] = {
            "model": model.name,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": False,
        }
        if tools:  # no tool_choice: the API's default with tools is "auto", as AgentBench FC sends them
            body["tools"] = list(tools)
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        if top_p is not None:
            body["top_p"] = top_p
        async with self._slots:
            started = time.monotonic()
            response, attempts = await self._with_retries("POST", "/chat/completions", body)
            latency = time.monotonic() - started
        if _says_unknown_model(response):
            raise UnknownModelError(f"{self.base_url} does not serve model {model.name!r}: {response.text[:300]}")
        if response.status_code == 404:
            raise EndpointError(
                f"{self.base_url}/chat/completions does not exist (HTTP 404): is this an OpenAI-compatible "
                "endpoint? The base URL usually ends in /v1"
            )
        data = self._json(response, "/chat/completions")
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return ChatReply(
                text=cut_at_stop(choice["message"].get("content") or "", stop),
                finish_reason=choice.get("finish_reason") or "",
                usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
                latency_s=latency,
                model=data.get("model", model.name),
                identity=model.identity,
                attempts=attempts,
                tool_calls=_tool_calls(choice["message"]),
            )
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise EndpointError(
                f"{self.base_url}/chat/completions: the answer is not a chat completion: {str(data)[:300]}"
            ) from exc

    async def _with_retries(self, method: str, path: str, body: object) -> tuple[httpx.Response, int]:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, json=body)
            # A timeout is the server's slowness (a reply is bounded by max_tokens): retried, then an endpoint error.
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                    httpx.TimeoutException) as exc:  # fmt: skip
                if attempt > self.settings.retries:
                    raise EndpointError(
                        f"cannot reach {self.base_url}{path} after {attempt} attempts: {exc!r}"
                    ) from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt > self.settings.retries:
                    return response, attempt
            await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        base = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # jitter: retries from many episodes do not stampede

    async def _request(self, method: str, path: str, body: object) -> httpx.Response:
        return (await self._with_retries(method, path, body))[0]

    def _json(self, response: httpx.Response, path: str) -> dict:
        try:
            data = response.json()
        except ValueError as exc:
            raise EndpointError(
                f"{self.base_url}{path} is not an OpenAI-compatible endpoint (HTTP {response.status_code}, and the "
                f"answer is not JSON: {response.text[:200]!r})"
            ) from exc
        if response.status_code >= 400:
            raise EndpointError(f"{self.base_url}{path}: HTTP {response.status_code}: {response.text[:300]}")
        if not isinstance(data, dict):
            raise EndpointError(f"{self.base_url}{path}: expected a JSON object, got {str(data)[:200]}")
        return data


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """OpenAI semantics: the text ends before the first stop string. Some servers (transformers serve) include
    it; cutting here makes every server agree."""
    cuts = [text.find(s) for s in stop or () if s and s in text]
    return text[: min(cuts)] if cuts else text


def _tool_calls(message: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The message's tool calls, each kept as the server wrote it but for the fields the schema names: a call whose
    arguments do not parse stays as it is, for the environment to answer as its protocol says."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TypeError(f"tool_calls is not a list: {calls!r}")
    return tuple(
        {
            "id": str(call.get("id") or ""),
            "type": call.get("type") or "function",
            "function": {
                "name": str((call.get("function") or {}).get("name") or ""),
                "arguments": (call.get("function") or {}).get("arguments") or "",
            },
        }
        for call in calls
    )


def _says_unknown_model(response: httpx.Response) -> bool:
    if response.status_code not in (400, 404, 422):
        return False
    text = response.text.lower()
    return "model" in text and any(word in text for word in ("not found", "does not exist", "unknown", "no such"))


async def require_model(client: ChatClient, name: str) -> None:
    """Fail early, and clearly, when the endpoint does not list `name` among its models."""
    served = await client.list_models()
    if name not in served:
        shown = ", ".join(served[:20]) or "none"
        raise UnknownModelError(f"{client.base_url} does not serve model {name!r}; it serves: {shown}")
