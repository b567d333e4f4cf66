"""Read-only queries of the live monitor (`cycleqd tui`), one module per screen: what it shows, as plain values.

The monitor polls while another process writes. Each query opens a short session and returns frozen dataclasses,
never ORM rows, so no transaction (and no read snapshot pinning the WAL) outlives a call, and no lazy load can
fire later from the UI. The store comes from `db/monitor_store.py`, whose connections set `query_only`, so a bug
here fails loudly instead of writing.

| module | the screen that shows it |
| --- | --- |
| `runs.py` | the runs list, and every run screen's header |
| `eval_run.py` | an eval run: scores per environment, the recent episodes, those in flight |
| `evolution_run.py` | an evolution: archives, QD history, progress, lineage, servers |
| `episode.py` | one episode, with its transcript |
"""
