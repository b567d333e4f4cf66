"""An eval run's episodes in flight (status running, as their last round left them), then its most recent
committed episodes, newest first; Enter opens a committed one."""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding

from cycleqd.monitor import format as fmt
from cycleqd.monitor.live_table import LiveTable, Row
from cycleqd.monitor.queries.eval_run import EpisodeRow, RunningEpisodeRow

RUNNING = "running"  # the status of an episode in flight: no EpisodeStatus, since no stored episode has it


class EpisodesTable(LiveTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open episode")]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(["#", "env", "task", "rep", "status", "score", "rnd", "tokens", "latency"], **kwargs)

    def show(self, episodes: list[EpisodeRow], running: Sequence[RunningEpisodeRow] = ()) -> None:
        in_flight: list[Row] = [(r.key, _running_cells(r)) for r in running]
        self.replace_rows(
            in_flight
            + [
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


def _running_cells(r: RunningEpisodeRow) -> tuple[str, ...]:
    """No id, score or latency yet: those come with its commit."""
    return ("–", r.env, fmt.clip(r.task_key, 20), str(r.repeat), RUNNING, "–", str(r.rounds), str(r.tokens), "–")
