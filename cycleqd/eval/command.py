"""`cycleqd eval`: what the user sees around the orchestrator (`runs` and `show` are in results_commands)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cycleqd.db.schema import Run, RunStatus
from cycleqd.db.store import Store, check_store_path, open_store
from cycleqd.errors import UnknownRunError
from cycleqd.eval.orchestrator import EpisodeResult, Orchestrator, summarize
from cycleqd.eval.runtime import images_for
from cycleqd.eval.tasks import EvalTask, load_eval_tasks, select_tasks
from cycleqd.ray.support import ray_backend
from cycleqd.requests import EvalRequest
from cycleqd.results.intervals import Intervals, aggregate_intervals
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.serving.model_ref import parse_model_ref, server_prefix
from cycleqd.serving.resolve import manager_for, resolve_model, server_choice

T = TypeVar("T")


def run_eval_command(
    request: EvalRequest, given: dict[str, Any], db_path: Path, resume_id: str | None, as_json: bool,
    console: Console, err: Console, ray_address: str | None = None,
) -> int:  # fmt: skip
    """`given`: the options the user typed (a resume checks them against the stored request). The store is opened
    (and the run row created) only once the model answers and the tasks load, so a typo leaves nothing behind.
    `ray_address`: play the episodes on a Ray cluster's slots (how to run, not what: not part of the request).
    Exit status 0 only when every planned episode is stored."""
    store = None
    resumed = None
    if resume_id:
        store = open_store(db_path, create=False)
        resumed = store.get_run(resume_id)
        if resumed is None or resumed.kind != "eval":
            raise UnknownRunError(f"no eval run {resume_id!r} in {db_path}; `cycleqd runs --db {db_path}` lists them")
        request = EvalRequest.from_snapshot(resumed.config).resumed_with(given, resume_id)
        if resumed.status == RunStatus.COMPLETED:  # every planned episode is stored: resuming changes nothing
            _print_results(store, resumed.id, store.aggregates(resumed.id), as_json, console, db_path)
            return 0
    else:
        check_store_path(db_path)  # a wrong --db fails now, not after the model has loaded
    _check_model(request)
    tasks = select_tasks(load_eval_tasks(list(request.tasks), request.suite, request.split, request.limit),
                         request.task_ids)  # fmt: skip
    if ray_address:  # before any run row: an unreachable cluster is one line
        ray_backend().connect(ray_address)
    build_images(docker_client(), images_for(request.tasks))
    evaluation = _Evaluation(request, tasks, db_path, store, resumed, None if as_json else console, ray_address)
    started = time.monotonic()
    try:
        aggregates = asyncio.run(_stopped_by_ctrl_c_or_sigterm(evaluation.run(), err))
    except KeyboardInterrupt:
        evaluation.finish(RunStatus.INTERRUPTED)
        if evaluation.run_id:
            err.print(f"interrupted; resume with: cycleqd eval --resume {evaluation.run_id} --db {db_path}",
                      highlight=False)  # fmt: skip
        else:
            err.print("interrupted before the run started; nothing was stored")
        return 130
    except BaseException:
        evaluation.finish(RunStatus.FAILED)
        if evaluation.run_id:
            err.print(f"the run failed; after a fix, resume with: cycleqd eval --resume {evaluation.run_id} "
                      f"--db {db_path}", highlight=False)  # fmt: skip
        raise
    store, run_id = evaluation.store, evaluation.run_id
    assert store is not None and run_id is not None
    missing = _missing_episodes(store, run_id, request.repeats, tasks)
    if missing:
        evaluation.finish(RunStatus.FAILED)
        err.print(f"[red]error:[/] {missing} planned episodes are not stored; resume with: "
                  f"cycleqd eval --resume {run_id} --db {db_path}", highlight=False)  # fmt: skip
        return 1
    evaluation.finish(RunStatus.COMPLETED)
    _print_results(store, run_id, aggregates, as_json, console, db_path, time.monotonic() - started)
    return 0


def _print_results(
    store: Store, run_id: str, aggregates: list, as_json: bool, console: Console, db_path: Path,
    wall_s: float | None = None,
) -> None:  # fmt: skip
    intervals = aggregate_intervals(store, run_id)
    if as_json:
        print(json.dumps({"run": run_id, "results": [_aggregate_json(a, intervals) for a in aggregates]}, indent=2))
    else:
        console.print(_results_table(aggregates, intervals, wall_s))
        console.print(f"run {run_id} (cycleqd show {run_id} --db {db_path})", highlight=False)


def _missing_episodes(store: Store, run_id: str, repeats: int, tasks: list[EvalTask]) -> int:
    """Planned (task, repeat) pairs with no stored episode, for any model of this run."""
    done = {(task_id, repeat) for _model, task_id, repeat in store.done_keys(run_id)}
    planned = {(store.task_id(t.env, t.suite, t.split, t.key, t.content_hash), r) for t in tasks
               for r in range(repeats)}  # fmt: skip
    return len(planned - done)


def _check_model(request: EvalRequest) -> None:
    """Parse the reference before anything is created or started: a typo costs one line, no run, no network."""
    if server_prefix(request.model)[1] != "default":
        parse_model_ref(request.model, key_env=request.api_key_env, allow_download=request.allow_download)
    server_choice(request.model, request.server)


async def _stopped_by_ctrl_c_or_sigterm(run: Awaitable[T], err: Console) -> T:
    """`run`, which Ctrl-C or SIGTERM cancels (the episodes still running stop and release their sandboxes and
    servers; committed episodes stay): KeyboardInterrupt once the cancellation is through. A second signal while
    that takes its seconds is answered with a line: asyncio's own second Ctrl-C raised KeyboardInterrupt inside
    whatever task ran, which left tracebacks under the resume line and could skip the release. SIGTERM goes
    through the loop too, not by sending ourselves SIGINT: a child of a background shell inherits SIGINT ignored
    (and keeps it so here), and SIGTERM was then lost while the run went on."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    signals = [signal.SIGTERM] + ([] if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else [signal.SIGINT])
    previous = {signum: signal.getsignal(signum) for signum in signals}
    stops = 0

    def stop() -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            main.cancel()
        elif stops == 2:
            err.print("stopping: the running episodes are releasing their sandboxes and the model server")

    for signum in signals:
        loop.add_signal_handler(signum, stop)
    try:
        return await run
    except asyncio.CancelledError:
        if stops:
            raise KeyboardInterrupt from None
        raise
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous[signum])  # SIGTERM: the CLI's exit, which still removes our containers


class _Evaluation:
    """One `cycleqd eval`: the model is resolved and served first, then the store and the run row are made."""

    def __init__(self, request: EvalRequest, tasks: list[EvalTask], db_path: Path, store: Store | None,
                 resumed: Run | None, console: Console | None, ray_address: str | None = None) -> None:  # fmt: skip
        self.request, self.tasks, self.db_path, self.console = request, tasks, db_path, console
        self.store = store
        self.run_id = resumed.id if resumed else None
        self.ray_address = ray_address

    def finish(self, status: RunStatus) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.set_run_status(self.run_id, status)

    def _open_run(self, decoding: str) -> tuple[Store, str]:
        if self.store is None:
            self.store = open_store(self.db_path)
        if self.run_id is None:
            # planned_episodes: the monitor's progress total
            config = {**self.request.snapshot(), "planned_episodes": len(self.tasks) * self.request.repeats,
                      "decoding": decoding}  # fmt: skip
            self.run_id = self.store.create_run("eval", config).id
        self.store.set_run_status(self.run_id, RunStatus.RUNNING)
        return self.store, self.run_id

    async def run(self) -> list:
        if self.ray_address:
            return await self._run_on_cluster()
        request = self.request
        ref = await asyncio.to_thread(
            resolve_model, request.model, key_env=request.api_key_env, allow_download=request.allow_download
        )
        identity = await asyncio.to_thread(ref.identity)
        server = server_choice(request.model, request.server)
        async with manager_for(ref, server=server, episodes_at_once=request.concurrency) as manager:
            await manager.serve(ref)
            store, run_id = await asyncio.to_thread(self._open_run, manager.decoding())
            model_id = store.model_id(identity, ref.label)
            started = time.monotonic()
            orchestrator = Orchestrator(store, run_id, manager, model_id, request.settings())
            with _progress_bar(self.console) as (on_result, set_total):
                set_total(len(orchestrator.plan(self.tasks)))
                orchestrator.on_result = on_result
                await orchestrator.run(self.tasks)
        return summarize(store, run_id, self.tasks, model_id, time.monotonic() - started)

    async def _run_on_cluster(self) -> list:
        """The episodes on a Ray cluster's slots, each node serving the model; the head stores them as they come."""
        request = self.request
        store, run_id = await asyncio.to_thread(self._open_run, "on the cluster's nodes, each its own server")
        config = {**request.snapshot(), "ray": self.ray_address, "server": server_choice(request.model, request.server)}
        started = time.monotonic()
        with _progress_bar(self.console) as (on_result, set_total):
            model_id = await ray_backend().eval_on_cluster(store, run_id, config, self.tasks, request.settings(),
                                                           set_total, on_result)  # fmt: skip
        return summarize(store, run_id, self.tasks, model_id, time.monotonic() - started)


@contextlib.contextmanager
def _progress_bar(
    console: Console | None,
) -> Iterator[tuple[Callable[[EpisodeResult], None], Callable[[int], None]]]:
    """Episodes done, episodes per second and the running score per environment; the total is set once known."""
    totals: dict[str, list[float]] = defaultdict(list)
    started = time.monotonic()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), console=console, disable=console is None,
    )  # fmt: skip
    bar = progress.add_task("episodes", total=None, rate="")

    def on_result(result: EpisodeResult) -> None:
        if result.score is not None:
            totals[result.task.env].append(result.score)
        done = progress.tasks[0].completed + 1
        scores = "  ".join(f"{env} {sum(v) / len(v):.2f}" for env, v in sorted(totals.items()))
        rate = f"{done / max(time.monotonic() - started, 1e-9):.2f} ep/s  {scores}"
        progress.update(bar, advance=1, rate=rate)

    def set_total(episodes: int) -> None:
        progress.update(bar, total=episodes)

    with progress:
        yield on_result, set_total


def _aggregate_json(aggregate: Any, intervals: Intervals) -> dict[str, Any]:
    interval = intervals.get((aggregate.model_id, aggregate.env, aggregate.split))
    return {
        "env": aggregate.env, "split": aggregate.split, "score": aggregate.score, "episodes": aggregate.episodes,
        "errors": aggregate.errors, "wall_s": round(aggregate.wall_s, 1), "metrics": aggregate.metrics,
        "ci95": interval.to_json() if interval else None,
    }  # fmt: skip


def _results_table(aggregates: list, intervals: Intervals, wall_s: float | None = None) -> Table:
    table = Table("env", "split", "score", "95% interval (tasks)", "n", "errors", "wall time")
    for a in aggregates:
        interval = intervals.get((a.model_id, a.env, a.split))
        span = f"[{interval.low:.3f}, {interval.high:.3f}] ({interval.n})" if interval else "–"
        table.add_row(a.env, a.split, f"{a.score:.3f}", span, str(a.episodes), str(a.errors),
                      f"{wall_s or a.wall_s:.0f} s")  # fmt: skip
    return table
