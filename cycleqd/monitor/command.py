"""`cycleqd tui` and `python tui.py`: open a store read-only and run the monitor on it until the user quits."""

from __future__ import annotations

from pathlib import Path

from cycleqd.db.monitor_store import open_monitor_store


def run_tui(db_path: Path, refresh_s: float = 2.0) -> None:
    """Watch the store at `db_path`, re-reading it every `refresh_s` seconds. A missing or foreign file is an error
    (exit status 2, message on stderr), never a new empty store: a typo in --db must not look like "no runs yet"."""
    from cycleqd.display import error_boundary

    with error_boundary():  # `python tui.py` reaches here without the CLI's boundary
        store = open_monitor_store(db_path)
    # Textual loads only when there is something to show.
    from cycleqd.monitor.app import MonitorApp

    try:
        MonitorApp(store, source=str(db_path), refresh_s=refresh_s).run()
    finally:
        store.engine.dispose()
