"""The store opened for reading only: by the live monitor (`cycleqd tui`) and the reading commands (`runs`, `show`,
`report`). It creates, migrates and locks nothing, and leaves nothing beside the file, so watching or reading a
store never changes it and never blocks the process that writes it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.exc import DatabaseError
from sqlalchemy.pool import NullPool

from cycleqd.db.store import Store, StoreOpenError, check_store_file


def _monitor_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")  # the monitor must never write, not even by accident
    cursor.execute("PRAGMA busy_timeout=5000")  # only a checkpoint or a schema change can make a reader wait
    cursor.close()


def _reader(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that create and lock nothing. While a writer is live (its -wal file exists) a read-only
    connection shares its WAL index and sees every commit; with no writer, an immutable one reads the file as it
    is, so a read-only command leaves no -wal, -shm or lock behind (a plain connection would create them, and a
    read-only one could not remove them again)."""

    def connect() -> sqlite3.Connection:
        live = Path(f"{path}-wal").exists()
        mode = "mode=ro" if live else "immutable=1"
        return sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, check_same_thread=False)

    return connect


def open_monitor_store(path: Path) -> Store:
    """The store at `path`, opened for reading only. Unlike `open_store`, it neither creates nor migrates, and it
    leaves nothing beside the file. Each session gets a fresh connection, so a writer that starts later is seen."""
    path = Path(path).expanduser().resolve()
    check_store_file(path)
    engine = create_engine("sqlite://", creator=_reader(path), poolclass=NullPool)
    event.listen(engine, "connect", _monitor_pragmas)
    try:
        tables = set(inspect(engine).get_table_names())
    except DatabaseError as exc:
        engine.dispose()
        raise StoreOpenError(f"{path}: not an SQLite database ({exc.orig})") from None
    if "runs" not in tables:
        engine.dispose()
        raise StoreOpenError(f"{path}: an SQLite file, but not a cycleqd store (it has no runs table)")
    return Store(engine)
