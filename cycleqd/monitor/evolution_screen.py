"""One evolution run: its generation and active task, a heatmap per archive, and below them (one tab at a time, for
80 × 24) the QD metrics over generations, the lineage of the elite under the cursor, and the model servers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from cycleqd.db.schema import RunStatus
from cycleqd.monitor import format as fmt
from cycleqd.monitor.heatmap import Heatmap
from cycleqd.monitor.lineage import LineageTree
from cycleqd.monitor.live_screen import LiveScreen, LiveSource, ReadFailed
from cycleqd.monitor.qd_chart import QDChart
from cycleqd.monitor.queries.evolution_run import (
    ArchiveView,
    CandidateView,
    EvolutionProgress,
    GenerationView,
    ServerView,
    archive_views,
    evolution_progress,
    generation_history,
    lineage,
    server_views,
)
from cycleqd.monitor.queries.runs import RunSummary, run_summary
from cycleqd.monitor.servers_table import ServersTable

Selection = tuple[str, int | None]  # (archive name, elite's candidate id); ("", None) before any cursor has moved


@dataclass(frozen=True)
class EvolutionRun:
    """An evolution run as one read of the store found it."""

    summary: RunSummary
    progress: EvolutionProgress
    archives: list[ArchiveView]
    history: list[GenerationView]
    servers: list[ServerView]
    now: datetime  # what the servers' ages are measured against
    selected: Selection  # the selection when the read began, and its elite's lineage
    lineage: dict[int, CandidateView]


class EvolutionScreen(LiveScreen[EvolutionRun | None]):
    CSS_PATH = "evolution_screen.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("g", "tab('metrics')", "Metrics"),
        Binding("l", "tab('lineage')", "Lineage", show=False),
        Binding("s", "tab('servers')", "Servers"),
        Binding("m", "next_metric", "Next metric", show=False),
    ]

    def __init__(self, run_id: str, source: LiveSource) -> None:
        super().__init__(source)
        self.run_id = run_id
        # Rebound, never changed in place, so that a read in a worker thread sees one whole selection.
        self.selected: Selection = ("", None)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="evolution-summary", classes="summary")
        yield Horizontal(id="heatmaps")
        with TabbedContent(initial="metrics", id="panes"):
            with TabPane("QD metrics", id="metrics"):
                yield QDChart(id="qd-chart")
            with TabPane("lineage", id="lineage"):
                yield LineageTree(id="lineage-tree")
            with TabPane("servers", id="servers"):
                yield ServersTable(id="servers-table")
        yield Footer()

    # -- polling ---------------------------------------------------------------------------------------------------

    def read(self) -> EvolutionRun | None:
        """None when the run is no longer in the store."""
        store, now, selected = self.source.store, self.source.clock(), self.selected
        summary = run_summary(store, self.run_id, now)
        if summary is None:
            return None
        return EvolutionRun(
            summary,
            evolution_progress(store, self.run_id),
            archive_views(store, self.run_id),
            generation_history(store, self.run_id),
            server_views(store, self.run_id),
            now,
            selected,
            self._lineage_of(selected),
        )

    def show(self, run: EvolutionRun | None) -> None:
        if run is None:
            self.query_one("#evolution-summary", Static).update(f"run {self.run_id} is no longer in the store")
            return
        summary, progress, archives = run.summary, run.progress, run.archives
        generations = fmt.progress(progress.generations_done, progress.generations_total, False)
        if progress.last_generation and progress.last_generation != progress.generations_done:
            generations += f" (latest {progress.last_generation})"  # asynchronous runs commit out of order
        line = Text.assemble(
            (summary.id, "bold"), " · evolve · ", fmt.run_status(summary.status),
            f" · gen {generations}",
            " · active ", (progress.active_task or "–", "bold"),
            f" · {fmt.rate(summary.rate, summary.unit)} · {fmt.duration(summary.elapsed_s)}",
        )  # fmt: skip
        if progress.stage and summary.status == RunStatus.RUNNING:
            line.append(f" · {progress.stage}", style="bold yellow")
        if progress.pending and summary.status == RunStatus.RUNNING:
            line.append(f" · {progress.pending} being scored", style="dim")
        if progress.episodes is not None:
            saving = progress.episodes
            line.append(f" · episodes {saving.played}/{saving.planned} ({saving.saved:.0%} saved)", style="dim")
        self.query_one("#evolution-summary", Static).update(line)
        self._show_heatmaps(archives)
        self.query_one(QDChart).show([a.task_name for a in archives], run.history)
        self.query_one(ServersTable).show(run.servers, run.now, released=summary.status != RunStatus.RUNNING)
        if run.selected == self.selected:  # else the cursor has moved on, and its own read shows the lineage
            self._show_lineage(run.selected, run.lineage)

    def _show_heatmaps(self, archives: list[ArchiveView]) -> None:
        row = self.query_one("#heatmaps", Horizontal)
        existing = {h.archive.id: h for h in row.query(Heatmap)}
        for archive in archives:
            if archive.id in existing:
                existing[archive.id].show(archive)
            else:
                heatmap = Heatmap(archive, id=f"archive-{archive.id}")
                row.mount(heatmap)
                existing[archive.id] = heatmap
                if len(existing) == 1:
                    heatmap.focus()

    def _lineage_of(self, selected: Selection) -> dict[int, CandidateView]:
        elite_id = selected[1]
        return lineage(self.source.store, elite_id) if elite_id is not None else {}

    def _show_lineage(self, selected: Selection, found: dict[int, CandidateView]) -> None:
        archive, elite_id = selected
        title = f"elite of {archive}:" if archive else ""
        self.query_one(LineageTree).show(title, elite_id, found)

    # -- events ----------------------------------------------------------------------------------------------------

    async def on_heatmap_cursor_moved(self, event: Heatmap.CursorMoved) -> None:
        name = event.heatmap.archive.task_name
        if not event.heatmap.has_focus and self.selected[0] not in ("", name):
            return  # a refresh of an archive whose cursor is not the one followed
        selected = (name, event.elite.candidate_id if event.elite else None)
        if selected == self.selected:
            return
        self.selected = selected
        try:
            found = await self.source.turns.read(self.app, lambda: self._lineage_of(selected))
        except ReadFailed:
            return  # the next poll reads the lineage of the selection again
        if selected == self.selected:  # the tree must be the elite's that the title names, however reads interleave
            self._show_lineage(selected, found)

    async def on_heatmap_chosen(self, event: Heatmap.Chosen) -> None:
        await self.on_heatmap_cursor_moved(event)
        self.action_tab("lineage")

    def action_tab(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane

    def action_next_metric(self) -> None:
        self.query_one(QDChart).next_metric()
        self.action_tab("metrics")
