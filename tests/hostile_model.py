"""A test instrument, not a model: an OpenAI-compatible chat-completions server that plays scripted attacks.

Each task of the adversarial suite carries a marker `«name»` in its text; the server finds the marker in the
conversation, counts the assistant turns after it, and answers with that step of `scripts[name]` (the last step
repeats). It runs in a thread on loopback and can be taken down and brought back on the same port, to play a
model server that goes away for a while.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter

import uvicorn

MODEL = "hostile"
_MARKER = re.compile(r"«([a-z0-9_]+)»")


def scripted_reply(scripts: dict[str, list[str]], messages: list[dict[str, str]]) -> str:
    for position in range(len(messages) - 1, -1, -1):
        found = _MARKER.search(messages[position].get("content") or "")
        if found and messages[position]["role"] == "user":
            steps = scripts[found.group(1)]
            turn = sum(1 for m in messages[position + 1 :] if m["role"] == "assistant")
            return steps[min(turn, len(steps) - 1)]
    return "no marker: nothing scripted"


class HostileModelServer:
    """`base_url` is stable across `down()`/`up()`; `served` counts requests per script name."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = scripts
        self.served: Counter[str] = Counter()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_ref(self) -> str:
        return f"{self.base_url}#{MODEL}"

    async def _app(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"].endswith("/models"):
            payload = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
        else:
            messages = json.loads(body or b"{}").get("messages", [])
            text = scripted_reply(self.scripts, messages)
            for m in messages:
                if found := _MARKER.search(m.get("content") or ""):
                    self.served[found.group(1)] += 1
                    break
            payload = {
                "id": "cmpl-hostile", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    def up(self) -> None:
        config = uvicorn.Config(
            self._app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)  # type: ignore[union-attr]
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the hostile model server did not start")
            time.sleep(0.02)

    def down(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = self._thread = None
