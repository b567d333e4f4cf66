"""The live monitor (`cycleqd tui`, `python tui.py`): Textual screens and widgets over the read-only store queries
of `db/monitor_queries.py`. One module per widget or screen, each with its TCSS beside it."""
