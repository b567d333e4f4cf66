"""The most recent episodes of an eval run, newest first; Enter opens one."""

from __future__ import annotations

from textual.binding import Binding

from cycleqd.db.monitor_queries import EpisodeRow
from cycleqd.monitor import format as fmt
from cycleqd.monitor.live_table import LiveTable


class EpisodesTable(LiveTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open episode")]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(["#", "env", "task", "rep", "status", "score", "rnd", "tokens", "latency"], **kwargs)

    def show(self, episodes: list[EpisodeRow]) -> None:
        self.replace_rows(
            [
                (
                    str(e.id),
                    (
                        str(e.id),
                        e.env,
                        fmt.clip(e.task_key, 20),
                        str(e.repeat),
                        e.status,
                        fmt.score(e.score),
                        str(e.rounds),
                        str(e.tokens),
                        f"{e.latency_s:.1f}s",
                    ),
                )
                for e in episodes
            ]
        )
