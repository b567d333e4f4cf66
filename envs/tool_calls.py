"""What every environment needs under the tools protocol (AgentBench FC): a tool's schema as the chat API takes it,
the calls of an assistant message, the messages that answer them, and the gold replies written as calls.

The schemas keep FC's key order (type, function: name, description, parameters: type, properties, required,
additionalProperties), so that a tools array serialises to the same JSON text as FC's YAML gives.
"""

from __future__ import annotations

import json
from typing import Any

from cycleqd.envs.episode import AgentProtocol, EpisodeStatus, Message

# What FC's arguments readers let through (os_interaction/task.py:581, dbbench/task.py:139): its bare `except`
# catches anything; these are what json.loads and reading the parsed value can raise.
ARGUMENT_ERRORS = (ValueError, TypeError, AttributeError, RecursionError)


def string_property(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def function_tool(name: str, description: str, properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A function tool whose every property is required and no other is allowed, as all of FC's are."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


def calls_of(reply: Message) -> list[dict[str, Any]]:
    return list(reply.get("tool_calls") or [])


def function_of(call: dict[str, Any]) -> tuple[str, Any]:
    """A call's function name and its arguments as the server gave them (JSON text)."""
    function = call.get("function") or {}
    return function.get("name", ""), function.get("arguments", "{}")


def first_value(arguments: Any) -> Any:
    """A call's argument as FC reads every tool's: the first value of its parsed arguments, whatever its name
    (`list(arguments.values())[0]`): AttributeError for a JSON value that is not an object, IndexError for {}."""
    return list(arguments.values())[0]


def tool_result(call_id: str | None, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def user_message(content: str) -> Message:
    return {"role": "user", "content": content}


def gold_turn(protocol: AgentProtocol, text: str, thought: str, name: str, arguments: dict[str, Any],
              turn: int) -> Message:  # fmt: skip
    """A gold reply as the model would write it under `protocol`: the whole text reply, or its thought followed by
    one call (ids numbered by turn, so replays and the SFT data made from them are the same every time)."""
    if protocol == AgentProtocol.TEXT:
        return {"role": "assistant", "content": text}
    call = {"id": f"call_{turn}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip
    return {"role": "assistant", "content": thought, "tool_calls": [call]}


class ActsByCalls:
    """What an environment's tools-protocol episode shares: it reads whole assistant messages (`act`), so the text
    protocol's `step` is refused, and every reply is a round, whatever it held."""

    status: EpisodeStatus | None
    rounds: int
    messages: list[Message]

    async def step(self, reply: str) -> str | None:
        raise TypeError("a tools episode reads whole assistant messages: call act()")

    def _take(self, reply: Message) -> None:
        """Count the reply as a round and keep it in the episode's messages."""
        if self.status is not None:
            raise RuntimeError("act() after the episode ended")
        self.rounds += 1
        self.messages.append(reply)
