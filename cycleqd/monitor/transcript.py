"""An episode's whole transcript, one bordered block per message, named by what it is in an agent loop.

The first messages were written by the environment, not the model: its prompt and, for AgentBench, a worked
one-shot example (replies that look like the model's but are part of the prompt) — they are folded away under
"context", and the task statement closes them. After that come the model's actions and the environment's
observations, numbered by round. Under the tools protocol an action shows its tool calls (name and arguments, as
the model wrote them) and each tool result is the observation it answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Static


def message_titles(transcript: list[dict[str, Any]], context: int = 0) -> list[str]:
    """Within the context: the prompt, the example's replies and observations, then the task (a context of one
    message is just the prompt). After it: each
    assistant message an action, each user message the observation of that round. With no context recorded (an
    old episode), the first user message is the prompt."""
    titles, actions, seen_action = [], 0, False
    for position, message in enumerate(transcript):
        role = message.get("role", "?")
        if position < context:
            if position == 0:
                titles.append("prompt")  # a one-message context (coding) is its own task statement
            elif position == context - 1:
                titles.append("task")
            else:
                titles.append("example reply" if role == "assistant" else "example observation")
        elif role == "assistant":
            actions += 1
            seen_action = True
            titles.append(f"action {actions}")
        elif role == "user":
            titles.append(f"observation {actions}" if seen_action or context else "prompt")
        elif role == "tool":
            titles.append(f"tool result {actions}")
        else:
            titles.append(role)
    return titles


class MessageBlock(Static):
    """One message; its text is shown as it is, never read as markup."""

    def __init__(self, role: str, title: str, content: str, context: bool = False) -> None:
        super().__init__(Text(content), classes=f"message {role}" + (" context" if context else ""))
        self.border_title = title
        self.text = content


def _kind(message: dict[str, Any]) -> str:
    role = message.get("role", "?")
    return role if role in ("user", "assistant", "system", "tool") else "other"


def message_text(message: dict[str, Any]) -> str:
    """What a block shows: the content, then each tool call as `→ name(arguments)`, its arguments indented JSON
    where they parse and the model's own text where they do not (that is what the environment answered)."""
    lines = [message.get("content") or ""] if message.get("content") or not message.get("tool_calls") else []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        raw = function.get("arguments")
        try:
            shown = json.dumps(json.loads(raw), indent=2, ensure_ascii=False) if isinstance(raw, str) else repr(raw)
        except json.JSONDecodeError:
            shown = f"{raw}  (not JSON)"
        lines.append(f"→ {function.get('name') or '?'}({shown})")
    return "\n".join(lines)


class Transcript(VerticalScroll):
    DEFAULT_CSS = Path(__file__).with_name("transcript.tcss").read_text()
    BINDINGS = [
        Binding("home", "scroll_home", "Top"),
        Binding("end", "scroll_end", "Bottom"),
        Binding("pageup", "page_up", "Page ↑", show=False),
        Binding("pagedown", "page_down", "Page ↓", show=False),
    ]

    def __init__(self, transcript: list[dict[str, Any]], context: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.transcript = transcript
        self.context = min(context, len(transcript))

    def compose(self) -> ComposeResult:
        if not self.transcript:
            yield Static("(an empty transcript: the episode ended before the model was asked anything)")
        titles = message_titles(self.transcript, self.context)
        blocks = [
            MessageBlock(_kind(message), title, message_text(message), context=position < self.context)
            for position, (message, title) in enumerate(zip(self.transcript, titles, strict=True))
        ]
        folded = self.context - 1  # everything before the task statement
        if folded > 0:
            title = f"context: the environment's prompt{' and example' if folded > 1 else ''} ({folded} messages)"
            yield Collapsible(*blocks[:folded], title=title, collapsed=True, id="context")
        yield from blocks[max(folded, 0) :]
