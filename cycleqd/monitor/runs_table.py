"""The runs in the store, newest first: kind, status, progress, throughput, start and elapsed time."""

from __future__ import annotations

from datetime import tzinfo

from textual.binding import Binding

from cycleqd.db.schema import RunKind
from cycleqd.monitor import format as fmt
from cycleqd.monitor.live_table import LiveTable
from cycleqd.monitor.queries.runs import RunSummary


class RunsTable(LiveTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open run")]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(["run", "kind", "status", "progress", "rate", "started", "elapsed"], **kwargs)
        self.kinds: dict[str, RunKind] = {}

    def show(self, runs: list[RunSummary], zone: tzinfo | None) -> None:
        self.kinds = {run.id: run.kind for run in runs}
        self.replace_rows(
            [
                (
                    run.id,
                    (
                        run.id,
                        run.kind,
                        fmt.run_status(run.status),
                        fmt.progress(run.done, run.total, run.total_is_bound),
                        fmt.rate(run.rate, run.unit),
                        fmt.moment(run.created_at, zone),
                        fmt.duration(run.elapsed_s),
                    ),
                )
                for run in runs
            ]
        )
