"""What the terminal shows: the one error boundary (a user error is one line on stderr and its exit status, a bug
keeps its traceback), the live views of `eval` and `evolve`, and their final tables or JSON. The features under it
(`cycleqd.evaluate`, `cycleqd.evolve`, …) raise `UserError`s and return values; only this module and `cycleqd.cli`
hold a Console."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from cycleqd.events import EpisodesPlanned, RunOpened, Stage, Stopping
from cycleqd.monitor import format as fmt

if TYPE_CHECKING:
    from cycleqd.db.store import EpisodeKey
    from cycleqd.eval.orchestrator import EpisodeRound
    from cycleqd.eval_request import EvalRequest
    from cycleqd.evolution.loop import EvolutionEvent
    from cycleqd.evolver.config import EvolveConfig
    from cycleqd.results.values import EvalResult, EvolveResult

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long


@contextlib.contextmanager
def error_boundary(err: Console = err_console) -> Iterator[None]:
    """A user error (`cycleqd.errors.is_user_error`) is one line on stderr and its exit status (2; 1 for a run left
    incomplete), its traceback only with -v; anything else is a bug and keeps its traceback."""
    from cycleqd.errors import is_user_error, one_line

    try:
        yield
    except Exception as exc:
        if not is_user_error(exc):
            raise
        if logging.getLogger().isEnabledFor(logging.INFO):  # -v
            err.print_exception()
        # escaped: a message may hold brackets (`cycleqd[vllm]`, a list) that rich would take for markup
        err.print(f"[red]error:[/] {escape(one_line(exc))}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(getattr(exc, "exit_status", 2))
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handling (an image build, a model conversion)
        from cycleqd.errors import RunInterrupted

        err.print("interrupted")
        sys.exit(RunInterrupted.exit_status)


# Wide enough for any table's natural width: a table that does not expand takes only what its cells need.
_UNBOUNDED_WIDTH = 1_000_000


def print_table(table: Table, out: Console) -> None:
    """`table` fitted to a terminal; anywhere else (a pipe, a file) at its natural width, each row on one line.
    Without a terminal rich assumes 80 columns, and a script reading the output got model paths and scores
    wrapped or cut with an ellipsis."""
    if out.is_terminal:
        out.print(table)
        return
    natural = out.measure(table, options=out.options.update_width(_UNBOUNDED_WIDTH)).maximum
    width = out.width
    out.width = max(width, natural)  # the same console, so that what records or captures it sees the table
    try:
        out.print(table)
    finally:
        out.width = width


def _stop(live: Live) -> None:
    """Stop a live view, its last frame ending with its line: off a terminal rich leaves the final frame without
    its newline, and the table printed next was glued to it in a piped log."""
    if live.is_started:
        live.stop()
        if not live.console.is_terminal:
            live.console.line()


class RunClock:
    """The run's time as the store counts it (db/run_time.py: the sum of its sessions): what it had when this
    invocation opened it, plus this session's so far. The live bars, `cycleqd show` and the monitor then give one
    figure, and a resumed run's bar neither starts again from zero nor counts the days it lay stopped."""

    def __init__(self) -> None:
        self.before, self.opened = 0.0, time.monotonic()

    def open(self, event: RunOpened) -> None:
        self.before, self.opened = event.elapsed_s, time.monotonic()

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.opened


class _RunTimeColumn(ProgressColumn):
    """The run's time, written as the monitor writes it."""

    def __init__(self, clock: RunClock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, task: Task) -> Text:
        return Text(fmt.duration(self.clock.seconds()), style="progress.elapsed")


class _RunWatch:
    """The run id once the run exists, for the line that says how to resume it. `rerun`: the command that resumes
    the run's caller, where it has its own (the demo, run again, continues its evolution and the rest)."""

    def __init__(self, command: str, db: Path, err: Console, rerun: str | None = None) -> None:
        self.command, self.db, self.err, self.rerun = command, db, err, rerun
        self.run_id: str | None = None

    def opened(self, event: RunOpened) -> None:
        self.run_id = event.run_id

    def resume_line(self) -> str:
        return self.rerun or f"cycleqd {self.command} --resume {self.run_id} --db {self.db}"

    @contextlib.contextmanager
    def stops(self) -> Iterator[None]:
        """Ctrl-C: the resume line and exit status 130; a failure after the run exists: the resume line, then the
        error as the boundary shows it."""
        from cycleqd.errors import RunInterrupted

        try:
            yield
        except RunInterrupted as stopped:
            self.run_id = stopped.run_id or self.run_id
            if self.run_id or self.rerun:
                self.err.print(f"interrupted; resume with: {self.resume_line()}", highlight=False)
            else:
                self.err.print("interrupted before the run started; nothing was stored")
            sys.exit(RunInterrupted.exit_status)
        except SystemExit:  # SIGTERM outside the run's loop (an image build, the SVD cache): the run is interrupted
            if self.run_id:
                self.err.print(f"interrupted; resume with: {self.resume_line()}", highlight=False)
            raise
        except Exception as exc:
            from cycleqd.errors import IncompleteRunError

            if self.run_id and not isinstance(exc, IncompleteRunError):
                self.err.print(f"the run failed; after a fix, resume with: {self.resume_line()}", highlight=False)
            raise


# -- eval --------------------------------------------------------------------------------------------------------


class _BarAndLine(Progress):
    """A progress bar with a line of text under it, redrawn with the bar (so a time in it counts on); no line while
    `line()` gives ''."""

    def __init__(self, *columns: ProgressColumn, line: Callable[[], str], **options: Any) -> None:
        self.line = line  # first: Progress renders once while it is made
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if text := self.line():
            yield Text(text, style="progress.elapsed")


class EvalView:
    """This invocation's episodes done, the run's rate and time as the monitor gives them (episodes over the run's
    time, every session's) and the running score per environment; the total is set once known. Under the bar, the
    episodes in flight: how many, and the rounds, generated tokens and time of the one running longest (a long
    episode at the round limit otherwise left the bar at 0/1 for minutes)."""

    def __init__(self, console: Console | None, watch: _RunWatch) -> None:
        self.watch = watch
        self.totals: dict[str, list[float]] = defaultdict(list)
        self.clock, self.stored = RunClock(), 0  # stored: the run's episodes before this invocation
        self.in_flight: dict[EpisodeKey, EpisodeRound] = {}  # each episode's last EpisodeRound, until its result
        self.err = watch.err
        self.progress = _BarAndLine(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            _RunTimeColumn(self.clock), line=self.in_flight_line, console=console, disable=console is None,
        )  # fmt: skip
        self.bar = self.progress.add_task("episodes", total=None, rate="")

    def in_flight_line(self) -> str:
        """'2 in flight · longest: os dev.json#0, 4 rounds, 2,048 tokens generated, 5m12s'; '' when none is."""
        running = tuple(self.in_flight.values())  # a copy: the bar's refresh thread reads while events arrive
        if not running:
            return ""
        longest = min(running, key=lambda event: event.progress.started_at)
        done = longest.progress
        seconds = fmt.duration((datetime.now(UTC) - done.started_at).total_seconds())
        where = f"{longest.env} {fmt.clip(longest.task_key, 40)}"
        return (f"{len(running)} in flight · longest: {where}, {done.rounds} rounds, "
                f"{done.completion_tokens:,} tokens generated, {seconds}")  # fmt: skip

    def close(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()  # off a terminal rich's Progress ends its last line itself

    def __call__(self, event: object) -> None:
        from cycleqd.eval.orchestrator import EpisodeResult, EpisodeRound

        if isinstance(event, EpisodeRound):
            self.in_flight[event.key] = event
        elif isinstance(event, RunOpened):
            self.watch.opened(event)
            self.clock.open(event)
            self.stored = event.done
        elif isinstance(event, EpisodesPlanned):  # the bar shows once the model answers and the run exists
            self.progress.update(self.bar, total=event.episodes)
            self.progress.start()
        elif isinstance(event, Stopping):
            self.err.print("stopping: the running episodes are releasing their sandboxes and the model server")
        elif isinstance(event, EpisodeResult):
            if event.key is not None:
                self.in_flight.pop(event.key, None)
            if event.score is not None:
                self.totals[event.task.env].append(event.score)
            done = self.progress.tasks[0].completed + 1
            scores = "  ".join(f"{env} {sum(v) / len(v):.2f}" for env, v in sorted(self.totals.items()))
            rate = fmt.rate((self.stored + done) / max(self.clock.seconds(), 1e-9), "ep")
            self.progress.update(self.bar, advance=1, rate=f"{rate}  {scores}")


def show_eval(request: EvalRequest, given: dict[str, Any], db: Path, resume: str | None, as_json: bool,
              ray: str | None) -> None:  # fmt: skip
    """`cycleqd eval`: the progress bar while it runs, then the scores (a table, or JSON)."""
    from cycleqd.eval.evaluate import evaluate

    watch = _RunWatch("eval", db, err_console)
    view = EvalView(None if as_json else console, watch)
    with watch.stops(), contextlib.closing(view):
        result = evaluate(request, db=db, on_event=view, resume=resume, given=given, ray=ray)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    console.print(eval_table(result))
    console.print(f"run {result.run_id} (cycleqd show {result.run_id} --db {db})", highlight=False)


def eval_table(result: EvalResult) -> Table:
    table = Table("env", "split", "score", "95% interval (tasks)", "n", "errors", "wall time")
    for s in result.scores:
        span = f"[{s.interval.low:.3f}, {s.interval.high:.3f}] ({s.interval.n})" if s.interval else "–"
        # s.wall_s: the time this environment took, as `cycleqd show` and the monitor give it (db/run_time.py)
        table.add_row(s.env, s.split, fmt.score(s.score, 3), span, str(s.episodes), str(s.errors),
                      f"{s.wall_s:.0f} s")  # fmt: skip
    return table


# -- evolve ------------------------------------------------------------------------------------------------------


class EvolutionView:
    """The live view: a bar over generations with the run's time (the monitor's), the active task, archive fill
    and the last child's scores."""

    def __init__(self, generations: int | None, console: Console, enabled: bool, watch: _RunWatch) -> None:
        self.console, self.enabled, self.watch = console, enabled, watch
        self.clock = RunClock()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 _RunTimeColumn(self.clock), console=console)  # fmt: skip
        self.bar = self.progress.add_task("generations", total=generations)
        self.lines: dict[str, str] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def _render(self) -> Group:
        return Group(self.progress, *self.lines.values())

    def __call__(self, event: object) -> None:
        from cycleqd.evolution.loop import EvolutionEvent

        if isinstance(event, RunOpened):
            self.watch.opened(event)
            self.clock.open(event)
            self.progress.update(self.bar, total=event.planned, completed=max(0, event.done - 1))  # 0: the experts
        elif isinstance(event, Stage):
            if self.enabled and event.text:
                self.console.print(f"run {self.watch.run_id}: {event.text}…", highlight=False)
        elif isinstance(event, Stopping):
            self.watch.err.print("stopping: the running episodes are releasing their sandboxes and the model servers")
        elif isinstance(event, EvolutionEvent):
            self._update(event)

    def _update(self, event: EvolutionEvent) -> None:
        from cycleqd.evolution.loop import EventKind

        scores = "  ".join(f"{k} {v:.2f}" for k, v in event.scores.items())
        if event.kind is EventKind.EXPERT:
            self.lines["experts"] = f"expert {event.candidate_id}: {scores}"
        elif event.kind is EventKind.CHILD:
            played = f" ({event.episodes[0]}/{event.episodes[1]} episodes)" if event.episodes else ""
            outcome = "rejected early, no archive could take it" if event.rejected_early else scores
            self.lines["child"] = f"generation {event.generation} (active {event.active_task}): child {outcome}{played}"
        elif event.kind is EventKind.GENERATION:
            fill = "  ".join(f"{m['archive']} {m['elites']} elites, best {m['best']:.2f}" for m in event.metrics)
            self.lines["archives"] = f"archives: {fill}"
            taken = [f"{i.archive} {i.status.name.lower()}" for i in event.insertions if i.status]
            rejected = "rejected early" if event.rejected_early else "rejected everywhere"
            self.lines["insert"] = f"last child: {', '.join(taken) or rejected}"
            if event.generation >= 1:
                self.progress.update(self.bar, completed=event.generation)
        elif event.kind is EventKind.SEARCH:
            self.lines["search"] = f"random search baseline, merge {event.candidate_id}: {scores}"
        elif event.kind is EventKind.FINAL:
            self.lines["final"] = f"test split, candidate {event.candidate_id}: {scores}"
        if self.enabled:
            if not self.live.is_started:  # from the loop's first event: the SVD cache's own bars come before
                self.live.start()
            self.live.update(self._render())

    def close(self) -> None:
        _stop(self.live)


def show_evolve(config: EvolveConfig | None, db: Path, resume: str | None, as_json: bool, ray: str | None,
                out: Console | None = None, err: Console | None = None, rerun: str | None = None) -> int:  # fmt: skip
    """`cycleqd evolve` (and the demo's evolution): the live view while it runs, then the final table or JSON.
    `rerun`: the command a stopped run's line names instead of `cycleqd evolve --resume` (the demo's own)."""
    from cycleqd.evolution.run import evolve
    from cycleqd.results.intervals import final_tables

    out, err = out or console, err or err_console
    watch = _RunWatch("evolve", db, err, rerun)
    view = EvolutionView(config.generations if config is not None else None, out, enabled=not as_json, watch=watch)
    with watch.stops(), contextlib.closing(view):
        result: EvolveResult = evolve(config, db=db, on_event=view, resume=resume, ray=ray, progress=not as_json)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for table in final_tables(list(result.table), [t.name for t in result.tasks], result.intervals):
        out.print(table)
    out.print(f"final model: {result.final_model}\nrun {result.run_id} (cycleqd report {result.run_id} --db {db})",
              highlight=False)  # fmt: skip
    return 0


# -- report ------------------------------------------------------------------------------------------------------


def show_report(run_text: str, db: Path, out: Path | None) -> None:
    """`cycleqd report`: the final table with its intervals, then a heatmap PNG per archive, the QD metrics and the
    children's episode table written under `out` (default: report-RUN)."""
    from cycleqd.db.evolution_store import EvolutionStore
    from cycleqd.db.monitor_store import open_monitor_store
    from cycleqd.db.schema import RunKind
    from cycleqd.evolution.report import final_rows, saving_line, write_episode_table, write_heatmaps, write_qd_metrics
    from cycleqd.results.intervals import final_report_tables
    from cycleqd.results.lookup import find_run

    store = open_monitor_store(db)
    run = find_run(store, run_text, db, kind=RunKind.EVOLVE)
    evo = EvolutionStore(store, run.id)
    names = [t["name"] for t in run.config["tasks"]]
    for table in final_report_tables(store, run.id, final_rows(evo, names), run.config["tasks"]):
        console.print(table)
    if (saving := saving_line(evo)) is not None:
        console.print(saving, highlight=False)
    out = out or Path(f"report-{run.id}")
    for path in [*write_heatmaps(evo, out), write_qd_metrics(evo, out), write_episode_table(evo, out)]:
        console.print(f"wrote {path}", highlight=False)
