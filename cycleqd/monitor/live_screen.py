"""A screen whose contents come from the store and are re-read on every poll of the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

if TYPE_CHECKING:
    from cycleqd.monitor.app import MonitorApp


class LiveScreen(Screen[None]):
    ready = False  # composed and mounted: a poll that lands before would find no widgets to fill

    @property
    def monitor(self) -> MonitorApp:
        return cast("MonitorApp", self.app)

    def reload(self) -> None:
        """Re-read what this screen shows. Runs on every poll while the screen is on top; must be quick."""
        raise NotImplementedError

    def on_mount(self) -> None:
        # Textual calls this after the subclass's own on_mount (handlers run along the MRO).
        self.ready = True
        self.monitor.poll()

    def on_unmount(self) -> None:
        self.ready = False

    def on_screen_resume(self) -> None:
        # Coming back from a screen above: what we show may be a whole poll interval old.
        self.monitor.poll()
