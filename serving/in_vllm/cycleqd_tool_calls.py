"""Hermes-style tool calls (`<tool_call>{"name": …, "arguments": {…}}</tool_call>`) read out of a model's text into
the OpenAI chat schema. The one parser of cycleqd's tool protocol: vLLM runs it through our tool-parser plugin
(`cycleqd_vllm_tool_parser.py` beside this file) and transformers serve through `serving/transformers_tools.py`, so
both servers turn the same text into the same calls. Standard library only: it runs inside vLLM's venv too.

Unlike vLLM's own `hermes` parser, which returns the whole text as content when one call's JSON is malformed, a block
whose function name can be read stays a call, its arguments the raw text the model wrote: as with OpenAI's API, a
call's `arguments` may be malformed JSON, and the environment answers it as its protocol says.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

START, END = "<tool_call>", "</tool_call>"
# A block runs to its end tag, or to the end of the text where the model stopped (or was cut) before closing it.
BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)+)"')
ARGUMENTS = re.compile(r'"arguments"\s*:\s*')


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, calls): the text outside the recognised call blocks (None where nothing is left) and each call as
    {"id", "type": "function", "function": {"name", "arguments"}}, `arguments` a JSON text. A block with no readable
    function name is no call and stays in the content; text without calls comes back unchanged."""
    calls, kept, last = [], [], 0
    for block in BLOCK.finditer(text):
        call = _call(block.group(1).strip())
        if call is None:
            continue
        calls.append(call)
        kept.append(text[last : block.start()])
        last = block.end()
    if not calls:
        return text, []
    content = "".join([*kept, text[last:]]).strip()
    return content or None, calls


def _call(body: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("name"), str) and parsed["name"]:
        arguments = parsed.get("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return _openai_call(parsed["name"], text)
    name = NAME.search(body)
    if name is None:
        return None
    return _openai_call(json.loads(f'"{name.group(1)}"'), _raw_arguments(body))


def _raw_arguments(body: str) -> str:
    """What follows `"arguments":` in a body that is not JSON, less the brace that would close the call's object."""
    found = ARGUMENTS.search(body)
    if found is None:
        return ""
    raw = body[found.end() :].rstrip()
    return raw[:-1].rstrip() if raw.endswith("}") and raw.count("}") > raw.count("{") else raw


def _openai_call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def template_arguments(arguments: object) -> dict[str, Any]:
    """A call's `arguments` as a chat template takes them back (a mapping). Malformed JSON, or JSON that is not an
    object, becomes {}: what vLLM 0.32 does (renderers/chat_utils.py `_postprocess_messages`), so that both servers
    render an earlier malformed call alike and the conversation can go on."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}
