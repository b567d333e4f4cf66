"""An episode's whole transcript, one bordered block per message, named by what it is in an agent loop: the prompt,
then the model's actions and the environment's observations, numbered by round."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static


def message_titles(transcript: list[dict[str, str]]) -> list[str]:
    """The first user message is the prompt; each assistant message an action, each user message after it the
    observation of that round."""
    titles, actions, seen_action = [], 0, False
    for message in transcript:
        role = message.get("role", "?")
        if role == "assistant":
            actions += 1
            seen_action = True
            titles.append(f"action {actions}")
        elif role == "user":
            titles.append(f"observation {actions}" if seen_action else "prompt")
        else:
            titles.append(role)
    return titles


class MessageBlock(Static):
    """One message; its text is shown as it is, never read as markup."""

    def __init__(self, role: str, title: str, content: str) -> None:
        super().__init__(Text(content), classes=f"message {role}")
        self.border_title = title
        self.text = content


class Transcript(VerticalScroll):
    DEFAULT_CSS = Path(__file__).with_name("transcript.tcss").read_text()
    BINDINGS = [
        Binding("home", "scroll_home", "Top"),
        Binding("end", "scroll_end", "Bottom"),
        Binding("pageup", "page_up", "Page ↑", show=False),
        Binding("pagedown", "page_down", "Page ↓", show=False),
    ]

    def __init__(self, transcript: list[dict[str, str]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.transcript = transcript

    def compose(self) -> ComposeResult:
        if not self.transcript:
            yield Static("(an empty transcript: the episode ended before the model was asked anything)")
        titles = message_titles(self.transcript)
        for message, title in zip(self.transcript, titles, strict=True):
            role = message.get("role", "?")
            kind = role if role in ("user", "assistant", "system") else "other"
            yield MessageBlock(kind, title, message.get("content", ""))
