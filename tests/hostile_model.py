"""A test instrument, not a model: an OpenAI-compatible chat-completions server that plays scripted attacks.

Each task of the adversarial suite carries a marker `«name»` in its text; the server finds the marker in the
conversation, counts the assistant turns after it, and answers with that step of `scripts[name]` (the last step
repeats). It runs in a thread on loopback and can be taken down and brought back on the same port, to play a
model server that goes away for a while. Under the tools protocol (`protocol="tools"`) it plays the same scripts as
AgentBench FC's tool calls: each step's text action becomes the call that does the same (an OS bash block
`bash_action`, an answer `answer_action`, a finish `finish_action`, a DB operation `execute_sql`, a final answer
`commit_final_answer`, code `submit`), and a step with no action stays text, a reply without a tool call.
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cycleqd.envs.coding.episode import extract_code
from cycleqd.envs.db.episode import parse_db_action, parse_final_answer
from cycleqd.envs.os.actions import parse_os_action

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


def as_tool_call(text: str, call_id: str) -> dict:
    """The assistant message that does under the tools protocol what `text` does under the text protocol."""
    os_action, db_action = parse_os_action(text), parse_db_action(text)
    if os_action.kind == "bash":
        call = ("bash_action", {"script": os_action.content})
    elif os_action.kind == "answer":
        call = ("answer_action", {"answer": os_action.content})
    elif os_action.kind == "finish":
        call = ("finish_action", {"thought": os_action.thought})
    elif db_action.kind == "operation":
        call = ("execute_sql", {"query": db_action.content})
    elif db_action.kind == "answer":
        call = ("commit_final_answer", {"answers": [str(v) for v in parse_final_answer(db_action.content or "")]})
    elif "```" in text:  # a coding answer
        call = ("submit", {"code": extract_code(text)})
    else:
        return {"role": "assistant", "content": text}
    name, arguments = call
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


class HostileModelServer:
    """`base_url` is stable across `down()`/`up()`; `served` counts requests per script name."""

    def __init__(self, scripts: dict[str, list[str]], protocol: str = "text") -> None:
        self.scripts = scripts
        self.protocol = protocol
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

    async def _models(self, _request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _chat(self, request: Request) -> JSONResponse:
        messages = (await request.json()).get("messages", [])
        for m in messages:
            if found := _MARKER.search(m.get("content") or ""):
                self.served[found.group(1)] += 1
                break
        text = scripted_reply(self.scripts, messages)
        message = {"role": "assistant", "content": text}
        if self.protocol == "tools":
            message = as_tool_call(text, f"call_{sum(m['role'] == 'assistant' for m in messages)}")
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        return JSONResponse({
            "id": "cmpl-hostile", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })  # fmt: skip

    def up(self) -> None:
        app = Starlette(
            routes=[Route("/v1/models", self._models), Route("/v1/chat/completions", self._chat, methods=["POST"])]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
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
