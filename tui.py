"""cycleqd's terminal monitor: `python tui.py [--db PATH]` (the same as `cycleqd tui`).

Watches a store while other processes write to it: runs, eval scores and episodes, evolution archives, QD metrics,
lineages and model servers. Read-only; it never creates or changes a store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cycleqd.monitor.command import run_tui


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tui.py", description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("cycleqd.db"), help="the store (default: ./cycleqd.db)")
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between reads (default: 2)")
    args = parser.parse_args(argv)
    run_tui(args.db, refresh_s=args.refresh)


if __name__ == "__main__":
    main()
