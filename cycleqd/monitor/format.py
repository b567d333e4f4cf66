"""How the monitor writes numbers, durations and times: the same everywhere, and narrow enough for 80 columns."""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.text import Text

# Episode statuses are written as envs.episode.EpisodeStatus names them, here as in the CLI, the exports and the
# store, so that a status seen in one place can be searched for in another.

RUN_STATUS_STYLE = {"running": "bold yellow", "completed": "green", "failed": "bold red", "interrupted": "magenta"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def score(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def rate(per_second: float | None, unit: str) -> str:
    """Per second when fast, else per minute (episodes) or per hour (generations), so two digits stay readable."""
    if per_second is None:
        return "–"
    if unit == "gen":
        return f"{per_second * 3600:.1f} gen/h"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{per_second * 60:.1f} {unit}/m"


def progress(done: int, total: int | None, bound: bool) -> str:
    if total is None:
        return str(done)
    return f"{done}/{'≤' if bound else ''}{total}"


def moment(when: datetime, zone: tzinfo | None) -> str:
    """Month, day and minute in the monitor's zone (the local one unless a test pins it)."""
    return when.astimezone(zone).strftime("%m-%d %H:%M")


def run_status(status: str) -> Text:
    return Text(status, style=RUN_STATUS_STYLE.get(status, ""))


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
