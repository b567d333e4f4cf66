"""The monitor app: opens nothing itself (it is handed a read-only store), polls it, and stacks the screens
runs list → eval run → episode, or runs list → evolution run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from sqlalchemy.exc import SQLAlchemyError
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from cycleqd.db.store import Store
from cycleqd.monitor.live_screen import LiveScreen
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
        self.store = store
        self.sub_title = source
        self.refresh_s = refresh_s
        self.clock = clock
        self.zone = zone
        self.poll_errors = 0

    def get_default_screen(self) -> Screen[None]:
        return RunsScreen()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self.poll)

    def poll(self) -> None:
        """Re-read the store for the screen on top. A failed read (the writer migrating, the disk gone) is shown and
        tried again at the next poll: the monitor outlives what it watches."""
        if not self.is_running:
            return  # shutting down: the screens are being taken apart while this timer may still fire
        screen = self.screen
        if not isinstance(screen, LiveScreen) or not screen.ready:
            return
        try:
            screen.reload()
        except SQLAlchemyError as exc:
            self.poll_errors += 1
            self.notify(f"reading the store failed: {exc.__class__.__name__}: {exc}", severity="warning", timeout=5)

    def action_poll(self) -> None:
        self.poll()

    def action_keys(self) -> None:
        """`?`: the keys of the screen and the widget in focus, beside them; `?` again hides them."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()
