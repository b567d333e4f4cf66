"""The live monitor (`cycleqd tui`, `python tui.py`): Textual screens and widgets over the read-only store queries
of `queries/` (one module per screen), on the store as `db/monitor_store.py` opens it. One module per widget or
screen, each with its TCSS beside it."""
