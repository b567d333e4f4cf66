"""The evolution's model servers: which candidate each holds, and how long its last swap took."""

from __future__ import annotations

from datetime import datetime

from cycleqd.monitor import format as fmt
from cycleqd.monitor.live_table import LiveTable
from cycleqd.monitor.queries.evolution_run import ServerView


class ServersTable(LiveTable):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(["slot", "holds", "label", "last swap", "since"], **kwargs)

    def show(self, servers: list[ServerView], now: datetime, released: bool = False) -> None:
        """`released`: the run is over, so its servers are stopped, whatever candidate the store last saw in each
        slot (the run never writes the slots' release)."""
        rows = []
        for s in servers:
            holds = f"#{s.candidate_id} {s.candidate}".strip() if s.candidate_id is not None else "–"
            holds, label = ("released", "–") if released else (holds, fmt.clip(s.label, 30))
            since = fmt.duration((now - s.updated_at).total_seconds()) + " ago"
            rows.append((str(s.slot), (str(s.slot), holds, label, f"{s.swap_s:.1f}s", since)))
        self.replace_rows(rows)
