"""Scores of an eval run per (environment, split) as they stand, with how the episodes ended."""

from __future__ import annotations

from cycleqd.monitor import format as fmt
from cycleqd.monitor.live_table import LiveTable
from cycleqd.results.values import EnvScore

# The model's own endings; environment errors have their column (env_error), as they are never scored.
ENDINGS = ("completed", "round_limit", "invalid_action", "command_timeout", "episode_timeout")


class ScoreTable(LiveTable):
    def __init__(self, **kwargs: object) -> None:
        columns = ["env", "split", "n", "score", "time", "env_error", *ENDINGS]
        super().__init__(columns, **kwargs)
        self.show_cursor = False

    def show(self, scores: list[EnvScore]) -> None:
        rows = []
        for s in scores:
            endings = [str(s.statuses.get(status, 0)) for status in ENDINGS]
            time = fmt.duration(s.wall_s)  # the figure eval's table and `cycleqd show` give (db/run_time.py)
            cells = (s.env, s.split, str(s.episodes), fmt.score(s.score, 3), time, str(s.errors), *endings)
            rows.append((f"{s.env}/{s.split}", cells))
        self.replace_rows(rows)
