"""One eval run: its progress, the score table per environment and split, its episodes in flight and its latest
committed episodes."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from cycleqd.monitor import format as fmt
from cycleqd.monitor.episode_screen import EpisodeScreen
from cycleqd.monitor.episodes_table import EpisodesTable
from cycleqd.monitor.live_screen import LiveScreen, LiveSource
from cycleqd.monitor.queries.eval_run import (
    EpisodeRow,
    RunningEpisodeRow,
    env_scores,
    episodes_in_flight,
    eval_config,
    recent_episodes,
)
from cycleqd.monitor.queries.runs import RunSummary, run_summary
from cycleqd.monitor.score_table import ScoreTable
from cycleqd.results.values import EnvScore
from cycleqd.run_config import EvalRunConfig


@dataclass(frozen=True)
class EvalRun:
    """An eval run as one read of the store found it."""

    summary: RunSummary
    config: EvalRunConfig
    scores: list[EnvScore]
    episodes: list[EpisodeRow]  # the most recent, newest first
    running: list[RunningEpisodeRow] = field(default_factory=list)  # in flight, longest running first


def run_environments(config: EvalRunConfig, scores: list[EnvScore]) -> list[str]:
    """The environments the run plays: those of its planned tasks and those with episodes."""
    return list(dict.fromkeys([*config.environments(), *(s.env for s in scores)]))


EPISODES_TITLE = "most recent episodes"


class EvalScreen(LiveScreen[EvalRun | None]):
    CSS_PATH = "eval_screen.tcss"
    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_id: str, source: LiveSource) -> None:
        super().__init__(source)
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="eval-summary", classes="summary")
        yield ScoreTable(id="scores")
        yield Static(EPISODES_TITLE, id="episodes-title", classes="section")
        yield EpisodesTable(id="episodes")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(EpisodesTable).focus()

    def read(self) -> EvalRun | None:
        """None when the run is no longer in the store."""
        store = self.source.store
        summary = run_summary(store, self.run_id, self.source.clock())
        if summary is None:
            return None
        run_id = self.run_id
        return EvalRun(summary, eval_config(store, run_id), env_scores(store, run_id), recent_episodes(store, run_id),
                       episodes_in_flight(store, run_id))  # fmt: skip

    def show(self, run: EvalRun | None) -> None:
        if run is None:
            self.query_one("#eval-summary", Static).update(f"run {self.run_id} is no longer in the store")
            return
        summary, config = run.summary, run.config
        envs = ",".join(run_environments(config, run.scores)) or "–"
        what = f"{config.model or '?'} on {envs} ({config.split or '?'})"
        lines = Text.assemble(
            (summary.id, "bold"), f" · {summary.kind} · ", fmt.run_status(summary.status), f" · {what}\n",
            f"episodes {fmt.progress(summary.done, summary.total, summary.total_is_bound)} · "
            f"env errors {summary.errors} · {fmt.rate(summary.rate, summary.unit)} · "
            f"elapsed {fmt.duration(summary.elapsed_s)}", self.in_flight(run.running),
        )  # fmt: skip
        self.query_one("#eval-summary", Static).update(lines)
        self.query_one(ScoreTable).show(run.scores)
        self.query_one(EpisodesTable).show(run.episodes, run.running)
        self.query_one("#episodes-title", Static).update(
            f"in flight, then {EPISODES_TITLE}" if run.running else EPISODES_TITLE
        )

    def in_flight(self, running: list[RunningEpisodeRow]) -> str:
        """' · in flight 2, longest 5m12s', or nothing when no episode is."""
        if not running:
            return ""
        longest = (self.source.clock() - running[0].started_at).total_seconds()
        return f" · in flight {len(running)}, longest {fmt.duration(longest)}"

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if event.data_table.id != "episodes" or key is None:
            return
        if not key.isdigit():  # an episode in flight: nothing of it is stored but its progress
            self.app.notify("this episode is still running: its transcript is stored when it ends", timeout=4)
            return
        self.app.push_screen(EpisodeScreen(int(key), self.source))
