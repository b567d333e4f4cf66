"""The first screen: every run in the store; Enter opens an eval run or an evolution run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from cycleqd.db.schema import RunKind
from cycleqd.monitor.eval_screen import EvalScreen
from cycleqd.monitor.evolution_screen import EvolutionScreen
from cycleqd.monitor.live_screen import LiveScreen
from cycleqd.monitor.queries.runs import RunSummary, run_summaries
from cycleqd.monitor.runs_table import RunsTable


class RunsScreen(LiveScreen[list[RunSummary]]):
    CSS_PATH = "runs_screen.tcss"

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunsTable(id="runs")
        yield Static("", id="runs-empty", classes="summary")
        yield Footer()

    def read(self) -> list[RunSummary]:
        return run_summaries(self.source.store, self.source.clock())

    def show(self, runs: list[RunSummary]) -> None:
        self.query_one(RunsTable).show(runs, self.source.zone)
        empty = self.query_one("#runs-empty", Static)
        empty.display = not runs
        empty.update("no runs yet: this list fills in as soon as a run starts writing to the store")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        run_id = event.row_key.value
        if run_id is None:
            return
        if self.query_one(RunsTable).kinds.get(run_id) is RunKind.EVOLVE:
            self.app.push_screen(EvolutionScreen(run_id, self.source))
        else:
            self.app.push_screen(EvalScreen(run_id, self.source))
