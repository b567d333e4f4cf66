"""eval's and evolve's live views as a log reads them: stdout piped, no terminal."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cycleqd.display import EvolutionView, _RunWatch
from cycleqd.events import RunOpened
from cycleqd.evolution.loop import EventKind, EvolutionEvent


def piped_evolve_log(opened: RunOpened) -> list[str]:
    """What a piped `cycleqd evolve` writes: the live view's final frame, then the final table."""
    piped = io.StringIO()
    out = Console(file=piped)
    assert not out.is_terminal
    view = EvolutionView(3, out, enabled=True, watch=_RunWatch("evolve", Path("x.db"), out))
    view(opened)
    view(EvolutionEvent(EventKind.FINAL, 3, candidate_id=5, scores={"os": 0.5}))
    view.close()
    table = Table("model", "os", title="final table")
    table.add_row("base", "0.50")
    out.print(table)
    return piped.getvalue().splitlines()


def test_a_piped_evolve_log_ends_the_live_view_s_last_line_before_the_table() -> None:
    """Off a terminal rich printed the view's final frame without its newline, and the table's title was glued to
    the last line ("test split, candidate 5: os 0.50┏━━━┓")."""
    _bar, last, title, *_ = piped_evolve_log(RunOpened("abc", False, done=0, planned=3))
    assert (last, title.strip()) == ("test split, candidate 5: os 0.50", "final table")


def test_evolve_s_bar_counts_on_from_the_run_s_stored_time() -> None:
    """A resumed run's bar started again from 0:00:00; it gives the run's time as the monitor does (db/run_time.py)."""
    bar, *_ = piped_evolve_log(RunOpened("abc", True, done=1, planned=3, elapsed_s=247.0))
    assert bar.startswith("generations") and bar.endswith(" 0/3 4m07s")
