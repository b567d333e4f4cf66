"""The monitor app: opens nothing itself (it is handed a read-only store), polls it, and stacks the screens
runs list → eval run → episode, or runs list → evolution run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from cycleqd.db.store import Store
from cycleqd.monitor.live_screen import LiveSource
from cycleqd.monitor.runs_screen import RunsScreen


def utc_now() -> datetime:
    return datetime.now(UTC)


class MonitorApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "cycleqd monitor"
    ENABLE_COMMAND_PALETTE = False  # its footer entry costs room that 80 columns cannot spare
    BINDINGS = [Binding("q", "quit", "Quit"), Binding("r", "poll", "Refresh"), Binding("question_mark", "keys", "Keys")]

    def __init__(
        self,
        store: Store,
        source: str,
        refresh_s: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
        zone: tzinfo | None = None,
    ) -> None:
        """`clock` and `zone` are what elapsed times and start times are read against; tests pin them."""
        super().__init__()
        self.live_source = LiveSource(store, clock, zone)
        self.sub_title = source
        self.refresh_s = refresh_s

    @property
    def poll_errors(self) -> int:
        """Reads of the store that failed, each shown as a notification and tried again at the next poll."""
        return self.live_source.turns.failures

    def get_default_screen(self) -> Screen[None]:
        return RunsScreen(self.live_source)

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self.poll)

    async def poll(self) -> None:
        """Re-read the store for the screen on top, off the UI loop (see live_screen.py)."""
        await self.live_source.turns.refresh_top(self)

    async def action_poll(self) -> None:
        await self.poll()

    def action_keys(self) -> None:
        """`?`: the keys of the screen and the widget in focus, beside them; `?` again hides them."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()
