"""One episode: what it was, how it ended, and its whole transcript (scrollable)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Static

from cycleqd.monitor import format as fmt
from cycleqd.monitor.live_screen import LiveSource, ReadFailed
from cycleqd.monitor.queries.episode import EpisodeDetail, episode_detail
from cycleqd.monitor.transcript import Transcript


def describe(e: EpisodeDetail) -> Text:
    lines = Text.assemble(
        (f"episode {e.id}", "bold"), f" · run {e.run_id} · {e.env} {e.task_key} ({e.suite}/{e.split}) · "
        f"repeat {e.repeat}\n",
        (e.status, "bold"), f" · score {fmt.score(e.score)} · {e.rounds} round(s) · "
        f"{e.prompt_tokens}+{e.completion_tokens} tokens · {e.latency_s:.1f} s · {fmt.clip(e.model, 30)}",
    )  # fmt: skip
    lines.append("\n")
    lines.append_text(verdict_line(e))
    if e.error:
        lines.append(f"\nerror: {fmt.clip(e.error.strip(), 200)}", style="red")
    return lines


def verdict_line(e: EpisodeDetail) -> Text:
    """Passed or failed, the model's answer, what the grader expected, and why it decided so."""
    if e.score is None:
        return Text("not graded: an environment error is never the model's score", style="yellow")
    passed = e.score >= 1.0
    line = Text.assemble(("PASSED" if passed else "FAILED", "bold green" if passed else "bold red"))
    answer = e.verdict.get("answer")
    line.append(f" · answer {fmt.clip(repr(answer), 40)}" if answer is not None else " · no answer given")
    expected = e.verdict.get("expected")
    if expected:
        line.append(f" · expected {fmt.clip(' '.join(str(expected).split()), 60)}")
    detail = e.verdict.get("detail")
    if detail:
        line.append(f" · why: {fmt.clip(' '.join(str(detail).split()), 120)}")
    elif not passed and e.status != "completed":
        line.append(f" · why: it ended with {e.status}")
    return line


class EpisodeScreen(Screen[None]):
    """An episode is committed once it has ended, so it never changes: it is read once, not polled."""

    CSS_PATH = "episode_screen.tcss"
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, episode_id: int, source: LiveSource) -> None:
        super().__init__()
        self.episode_id = episode_id
        self.source = source

    def compose(self) -> ComposeResult:
        yield Header()
        yield Footer()

    async def on_mount(self) -> None:
        # Awaited here, as a live screen's first read is (live_screen.py): a pilot's `press` returns on a filled screen.
        try:
            detail = await self.source.turns.read(self.app, lambda: episode_detail(self.source.store, self.episode_id))
        except ReadFailed:
            await self._mount(
                Static(f"episode {self.episode_id} could not be read: Escape, then open it again", classes="summary")
            )
            return
        if detail is None:
            await self._mount(Static(f"episode {self.episode_id} is not in the store", classes="summary"))
            return
        transcript = Transcript(detail.transcript, context=detail.context_messages, id="transcript")
        await self._mount(Static(describe(detail), id="episode-meta", classes="summary"), transcript)
        transcript.focus()

    async def _mount(self, *widgets: Widget) -> None:
        await self.mount_all(widgets, before=self.query_one(Footer))
