"""What the CLI says when the store itself is the trouble, told apart by SQLite's error code on a real file: a lock
another process holds past the busy timeout (one line: wait, or another --db), a damaged file (one line: restore it
from a copy), a broken constraint (a bug: its traceback, exit 1); and a run id the store does not have (one line,
exit 2, from every command that takes one)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from cycleqd.db import store as store_module
from cycleqd.db.schema import RunKind, RunStatus
from cycleqd.db.store import NoSuchRunError, make_engine, open_store
from cycleqd.display import error_boundary
from cycleqd.errors import UnknownRunError, is_user_error, one_line
from cycleqd.results.lookup import find_run
from tests.cli_in_process import Run, one_line_error


@pytest.fixture
def stored_run(tmp_path: Path) -> tuple[Path, str]:
    """A real store file holding one finished eval run, closed, as a finished `cycleqd eval` leaves it."""
    path = tmp_path / "store.db"
    store = open_store(path)
    run = store.create_run(RunKind.EVAL, {"tasks": ["db"], "limit": 1})
    store.set_run_status(run.id, RunStatus.COMPLETED)
    store.engine.dispose()
    return path, run.id


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """The store's write lock, held by another connection (as another cycleqd process would) until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def test_a_lock_held_past_the_busy_timeout_says_so_and_what_to_do(
    stored_run: tuple[Path, str], run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, run_id = stored_run
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    with write_lock(path):
        code, out, err = run_cli("runs", "rm", run_id, "--db", str(path))
    line = one_line_error(code, err)
    assert line.startswith("the store is locked (database is locked): another cycleqd process held it for over 0.2 s")
    assert line.endswith("wait for that one to finish, or use another --db") and "restore" not in line
    assert out == "" and open_store(path).get_run(run_id) is not None  # nothing was removed


def test_a_broken_constraint_is_a_bug_with_its_traceback_and_exit_1(stored_run: tuple[Path, str]) -> None:
    path, _ = stored_run
    # A real process through the real boundary: Python's own handling of what the boundary lets through is the claim.
    script = textwrap.dedent(f"""
        from cycleqd.db.store import EpisodeRecord, open_store
        from cycleqd.display import error_boundary

        store = open_store({str(path)!r})
        model = store.model_id("sha256:abc", "/models/m")
        task = store.task_id("db", "builtin", "dev", "dev.json#0", "c0ffee")
        with error_boundary():
            store.record_episode(EpisodeRecord("no-such-run", model, task, 0, "completed", 1.0))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "sqlalchemy.exc.IntegrityError" in done.stderr and "FOREIGN KEY constraint failed" in done.stderr
    assert "error:" not in done.stderr and "restore it from a copy" not in done.stderr


@pytest.mark.parametrize("command", [["runs"], ["show", "RUN"]])
def test_a_damaged_store_says_restore_it_from_a_copy(
    stored_run: tuple[Path, str], run_cli: Run, command: list[str]
) -> None:
    path, run_id = stored_run
    damaged = bytearray(path.read_bytes())
    damaged[100:4096] = b"\xa5" * (4096 - 100)  # SQLite's header stays; the schema page after it is garbage
    path.write_bytes(bytes(damaged))
    code, _, err = run_cli(*[run_id if part == "RUN" else part for part in command], "--db", str(path))
    line = one_line_error(code, err)
    assert "the store is damaged (database disk image is malformed)" in line
    assert line.endswith("restore it from a copy, or use another --db")


def test_a_file_that_is_no_database_at_the_boundary_says_restore_it_from_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"garbage " * 1024)
    # Past the store's own checks (which name a foreign file at open): what the boundary makes of SQLite's error.
    engine = make_engine(path)
    with pytest.raises(DatabaseError) as raised, engine.connect() as connection:
        connection.execute(text("SELECT * FROM runs"))
    engine.dispose()
    assert raised.value.orig.sqlite_errorname == "SQLITE_NOTADB"
    err = Console(record=True, width=400)
    with pytest.raises(SystemExit) as exited, error_boundary(err):
        raise raised.value
    assert exited.value.code == 2
    assert err.export_text().strip() == (
        "error: the store is damaged (file is not a database); restore it from a copy, or use another --db"
    )


RUN_COMMANDS = [["show", "ID"], ["runs", "rm", "ID"], ["export", "ID"], ["report", "ID"], ["compare", "ID"],
                ["view", "ID"], ["eval", "--resume", "ID"], ["evolve", "--resume", "ID"]]  # fmt: skip


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=" ".join)
def test_an_unknown_run_id_is_one_line_and_exit_2(
    stored_run: tuple[Path, str], run_cli: Run, command: list[str]
) -> None:
    path, _ = stored_run
    code, out, err = run_cli(*[part.replace("ID", "0nope") for part in command], "--db", str(path))
    assert one_line_error(code, err) == f"no run '0nope' in {path} (list them with: cycleqd runs --db {path})"
    assert out == ""


def test_the_lookup_raises_unknown_run_for_a_missing_id_or_the_wrong_kind(stored_run: tuple[Path, str]) -> None:
    path, run_id = stored_run
    store = open_store(path, create=False)
    with pytest.raises(UnknownRunError, match="no run '0nope'"):
        find_run(store, "0nope", path)
    with pytest.raises(UnknownRunError, match=f"run {run_id} is an eval run, not an evolution"):
        find_run(store, run_id[:4], path, kind=RunKind.EVOLVE)
    assert find_run(store, run_id[:4], path, kind=RunKind.EVAL).id == run_id


def test_a_run_removed_under_a_writer_is_a_user_error_in_one_line(stored_run: tuple[Path, str]) -> None:
    path, run_id = stored_run
    store = open_store(path)
    store.delete_run(run_id)  # as `cycleqd runs rm` from another terminal, while the run still ran
    with pytest.raises(NoSuchRunError) as raised:
        store.set_run_status(run_id, RunStatus.INTERRUPTED)
    assert is_user_error(raised.value) and one_line(raised.value) == f"no run {run_id!r} in the store"
