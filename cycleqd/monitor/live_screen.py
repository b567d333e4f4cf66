"""Screens whose contents come from the store and are re-read on every poll of the app.

Reading and showing are two steps. A screen's `read` runs the store's queries in a worker thread and touches no
widget; its `show` updates the widgets on the UI loop and runs no query. A query can wait on the disk or on a writer's
checkpoint (up to the connection's busy timeout, 5 s), and on the UI loop that wait would freeze every key and redraw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from textual.app import App
from textual.screen import Screen

from cycleqd.db.store import Store

T = TypeVar("T")


class ReadFailed(Exception):
    """A read of the store raised; the user has been told and it was counted, so a caller only skips what it would
    have shown."""


class ReadTurns:
    """The monitor's reads of the store, one at a time, each in a worker thread. One at a time so that polls cannot
    pile up behind a slow disk, each holding a connection (and a read snapshot of the WAL) of its own."""

    def __init__(self) -> None:
        self.failures = 0  # reads that raised, each shown as a notification; the next poll tries again
        self._turn = asyncio.Lock()

    async def read(self, app: App[Any], query: Callable[[], T]) -> T:
        """`query()` in a worker thread, when no other read is running. Raises ReadFailed."""
        async with self._turn:
            return await self._in_thread(app, query)

    async def refresh_top(self, app: App[Any]) -> None:
        """Read for the live screen on top when this call's turn comes (a poll that started while a screen was being
        replaced reads for the screen that replaced it), and show what it read if that screen is still on top and
        mounted. A failed read leaves the screen as it was: the monitor outlives what it watches."""
        async with self._turn:
            if not app.is_running:
                return  # shutting down: the screens are being taken apart while a timer may still fire
            screen = app.screen
            if not isinstance(screen, LiveScreen) or not screen.ready:
                return
            try:
                found = await self._in_thread(app, screen.read)
            except ReadFailed:
                return
            if app.is_running and screen is app.screen and screen.ready:
                screen.show(found)

    async def _in_thread(self, app: App[Any], query: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(query)
        except SQLAlchemyError as exc:  # the writer migrating, the disk gone
            self.failures += 1
            app.notify(f"reading the store failed: {exc.__class__.__name__}: {exc}", severity="warning", timeout=5)
            raise ReadFailed from exc


@dataclass(frozen=True)
class LiveSource:
    """What the screens read against, handed to each screen as it is made: the read-only store, the clock that
    elapsed times are measured by and the zone that start times are shown in (tests pin both), and the turns that
    the reads take."""

    store: Store
    clock: Callable[[], datetime]
    zone: tzinfo | None
    turns: ReadTurns = field(default_factory=ReadTurns, compare=False)


class LiveScreen(Screen[None], Generic[T]):
    """A screen that shows what `read` found in the store, re-read on every poll while the screen is on top."""

    ready = False  # composed and mounted: a read that lands before would find no widgets to fill

    def __init__(self, source: LiveSource) -> None:
        super().__init__()
        self.source = source

    def read(self) -> T:
        """The store's queries for this screen. Runs in a worker thread: it must touch no widget."""
        raise NotImplementedError

    def show(self, found: T) -> None:
        """Put what `read` found on the screen. Runs on the UI loop: it must run no query."""
        raise NotImplementedError

    async def on_mount(self) -> None:
        # Textual calls this after the subclass's own on_mount (handlers run along the MRO). Awaited here, the first
        # read keeps this screen's message queue busy until it is shown, so a pilot's `press` or `pause` (which
        # waits for the screen's queue) returns on a filled screen.
        self.ready = True
        await self.source.turns.refresh_top(self.app)

    def on_unmount(self) -> None:
        self.ready = False

    async def on_screen_resume(self) -> None:
        # Coming back from a screen above: what we show may be a whole poll interval old.
        await self.source.turns.refresh_top(self.app)
