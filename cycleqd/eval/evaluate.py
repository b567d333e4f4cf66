"""`cycleqd.evaluate`: benchmark a model on the agent tasks and keep every episode in the store. Raises user errors
(`cycleqd.errors`) and returns an `EvalResult`; what the terminal shows is `cycleqd.display`'s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from cycleqd.db.schema import Run, RunKind, RunStatus
from cycleqd.db.store import Store, check_store_path, open_store
from cycleqd.errors import IncompleteRunError, explained
from cycleqd.eval.orchestrator import Orchestrator, summarize
from cycleqd.eval.runtime import images_for
from cycleqd.eval.tasks import EvalTask
from cycleqd.eval_request import EvalRequest
from cycleqd.events import EpisodesPlanned, OnEvent, RunOpened, Stopping, ignore
from cycleqd.ray.support import ray_backend
from cycleqd.results.intervals import aggregate_intervals
from cycleqd.results.lookup import find_run, model_label
from cycleqd.results.values import EnvScore, EvalResult
from cycleqd.run_config import eval_run_config
from cycleqd.run_ending import run_ending
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.serving.errors import ServingError
from cycleqd.serving.model_ref import parse_model_ref, server_prefix
from cycleqd.serving.resolve import manager_for, resolve_model, server_choice
from cycleqd.stopping import run_blocking


def evaluate(
    request: EvalRequest, *, db: Path | str, on_event: OnEvent | None = None, resume: str | None = None,
    given: dict[str, Any] | None = None, ray: str | None = None,
) -> EvalResult:  # fmt: skip
    """Run `request` and store every episode in the SQLite store at `db` (created if missing). The store is opened
    (and the run row created) only once the model answers and the tasks load, so a typo leaves nothing behind.

    `resume`: a run id (or a unique prefix) to finish; its stored request is used, and `given` (options the caller
    set explicitly) must agree with it. `ray`: play the episodes on a Ray cluster's slots. `on_event` receives
    `RunOpened`, `EpisodesPlanned`, `EpisodeRound`s while an episode is in flight (not from a cluster's nodes), an
    `EpisodeResult` per episode and `Stopping` (see cycleqd.events). Called where an event loop already runs (a
    Jupyter cell), the run gets a loop of its own in a worker thread, which then calls `on_event`; `evaluate_async`
    runs on the caller's loop instead.

    Raises a `UserError` (or one of `cycleqd.errors.USER_ERRORS`) for what the caller can fix, `IncompleteRunError`
    when planned episodes are missing at the end, `RunInterrupted` on Ctrl-C or SIGTERM (the run resumable)."""
    evaluation = _prepare(request, Path(db), on_event or ignore, resume, given, ray)
    if isinstance(evaluation, EvalResult):
        return evaluation
    with evaluation.ending():
        run_blocking(evaluation.run, lambda: evaluation.notify(Stopping()))
    return evaluation.conclude()


async def evaluate_async(
    request: EvalRequest, *, db: Path | str, on_event: OnEvent | None = None, resume: str | None = None,
    given: dict[str, Any] | None = None, ray: str | None = None,
) -> EvalResult:  # fmt: skip
    """`evaluate` on the running event loop, its blocking steps (images, the store) in worker threads. The loop and
    its signals are the caller's: cancelling the awaiting task stops the run as Ctrl-C does (the episodes release
    their sandboxes, the run is marked interrupted and resumable) and raises CancelledError."""
    evaluation = await asyncio.to_thread(_prepare, request, Path(db), on_event or ignore, resume, given, ray)
    if isinstance(evaluation, EvalResult):
        return evaluation
    with evaluation.ending():
        await evaluation.run()
    return await asyncio.to_thread(evaluation.conclude)


def _prepare(request: EvalRequest, db: Path, notify: OnEvent, resume: str | None, given: dict[str, Any] | None,
             ray: str | None) -> _Evaluation | EvalResult:  # fmt: skip
    """Everything before the run's loop: the request of a run to resume (or its result, when it is complete), the
    model reference and the tasks checked, the cluster reached, the images built."""
    store, resumed = None, None
    if resume:
        store = open_store(db, create=False)
        resumed = find_run(store, resume, db, kind=RunKind.EVAL)
        request = EvalRequest.from_snapshot(resumed.config).resumed_with(given or {}, resumed.id)
        if resumed.status == RunStatus.COMPLETED:  # every planned episode is stored: resuming changes nothing
            return eval_result(store, resumed.id, db)
    else:
        check_store_path(db)  # a wrong --db fails now, not after the model has loaded
    _check_model(request)
    tasks = request.planned_tasks()
    if ray:  # before any run row: an unreachable cluster is one line
        ray_backend().connect(ray)
    build_images(docker_client(), images_for(request.tasks))
    return _Evaluation(request, tasks, db, store, resumed, notify, ray)


def eval_result(store: Store, run_id: str, db: Path, wall_s: float | None = None) -> EvalResult:
    """The run's scores as the store holds them, each with its 95% interval over tasks and the time its environment
    took (db/run_time.py: `cycleqd show` and the monitor give the same, a resume's idle gap left out)."""
    intervals = aggregate_intervals(store, run_id)
    times = store.wall_times(run_id)
    labels = {m.id: model_label(m.reference, m.identity) for m in store.run_models([run_id])[run_id]}
    scores = tuple(
        EnvScore(
            model=labels.get(a.model_id, str(a.model_id)),
            env=a.env,
            split=a.split,
            score=a.score,
            episodes=a.episodes,
            errors=a.errors,
            wall_s=times.get((a.model_id, a.env, a.split), 0.0),
            metrics=a.metrics,
            interval=intervals.get((a.model_id, a.env, a.split)),
        )  # fmt: skip
        for a in store.aggregates(run_id)
    )
    return EvalResult(run_id=run_id, db=db, scores=scores, wall_s=wall_s)


def _missing_episodes(store: Store, run_id: str, repeats: int, tasks: list[EvalTask]) -> int:
    """Planned (task, repeat) pairs with no stored episode, for any model of this run."""
    done = {(key.task_id, key.repeat) for key in store.done_keys(run_id)}
    planned = {(store.task_id(t.env, t.suite, t.split, t.key, t.content_hash), r) for t in tasks
               for r in range(repeats)}  # fmt: skip
    return len(planned - done)


def _check_model(request: EvalRequest) -> None:
    """Parse the reference before anything is created or started: a typo costs one line, no run, no network."""
    if server_prefix(request.model)[1] != "default":
        parse_model_ref(request.model, key_env=request.api_key_env, allow_download=request.allow_download)
    server_choice(request.model, request.server)


class _Evaluation:
    """One evaluation: the model is resolved and served first, then the store and the run row are made."""

    def __init__(self, request: EvalRequest, tasks: list[EvalTask], db: Path, store: Store | None,
                 resumed: Run | None, notify: OnEvent, ray_address: str | None = None) -> None:  # fmt: skip
        self.request, self.tasks, self.db, self.notify = request, tasks, db, notify
        self.store = store
        self.resumed = resumed is not None
        self.run_id = resumed.id if resumed else None
        self.ray_address = ray_address
        self.started = time.monotonic()

    def finish(self, status: RunStatus) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.set_run_status(self.run_id, status)

    def ending(self) -> contextlib.AbstractContextManager[None]:
        """The run's status when it stops early (cycleqd/run_ending.py); a server's failure explained to a user."""
        return run_ending(self, self._explained)

    def _explained(self, exc: BaseException) -> BaseException | None:
        return explained(exc, self.request.api_key_env) if isinstance(exc, ServingError) else None

    def conclude(self) -> EvalResult:
        """Completed once every planned episode is stored, else failed (resumable)."""
        store, run_id = self.store, self.run_id
        assert store is not None and run_id is not None
        missing = _missing_episodes(store, run_id, self.request.repeats, self.tasks)
        if missing:
            self.finish(RunStatus.FAILED)
            raise IncompleteRunError(f"{missing} planned episodes of run {run_id} are not stored; resume with: "
                                     f"cycleqd eval --resume {run_id} --db {self.db}")  # fmt: skip
        self.finish(RunStatus.COMPLETED)
        return eval_result(store, run_id, self.db, time.monotonic() - self.started)

    def _open_run(self, decoding: str) -> tuple[Store, str]:
        if self.store is None:
            self.store = open_store(self.db)
        if self.run_id is None:
            played = {task.env for task in self.tasks}
            config = eval_run_config(self.request.snapshot(), len(self.tasks) * self.request.repeats,
                                     [env for env in self.request.tasks if env in played], decoding)  # fmt: skip
            self.run_id = self.store.create_run(RunKind.EVAL, config).id
        self.store.set_run_status(self.run_id, RunStatus.RUNNING)
        done, elapsed = self.store.count_episodes(self.run_id), self.store.run_seconds(self.run_id)
        self.notify(RunOpened(self.run_id, self.resumed, done=done, elapsed_s=elapsed))
        return self.store, self.run_id

    async def run(self) -> None:
        if self.ray_address:
            return await self._run_on_cluster()
        request = self.request
        ref = await asyncio.to_thread(
            resolve_model, request.model, key_env=request.api_key_env, allow_download=request.allow_download
        )
        identity = await asyncio.to_thread(ref.identity)
        server = server_choice(request.model, request.server)
        planned = len(self.tasks) * request.repeats  # the whole request's, so a resume chooses as the run did
        async with manager_for(
            ref,
            server=server,
            episodes_at_once=request.concurrency,
            episodes=planned,
            dtype=request.dtype,
            deterministic=request.deterministic,
        ) as manager:
            await manager.serve(ref)
            store, run_id = await asyncio.to_thread(self._open_run, manager.decoding())
            model_id = store.model_id(identity, ref.label)
            orchestrator = Orchestrator(store, run_id, manager, model_id, request.settings())
            self.notify(EpisodesPlanned(len(orchestrator.plan(self.tasks))))
            orchestrator.on_result = orchestrator.on_round = self.notify
            await orchestrator.run(self.tasks)
        summarize(store, run_id, self.tasks, model_id)

    async def _run_on_cluster(self) -> None:
        """The episodes on a Ray cluster's slots, each node serving the model; the head stores them as they come."""
        request = self.request
        store, run_id = await asyncio.to_thread(self._open_run, "on the cluster's nodes, each its own server")
        config = {**request.snapshot(), "ray": self.ray_address, "server": server_choice(request.model, request.server)}

        def planned(episodes: int) -> None:
            self.notify(EpisodesPlanned(episodes))

        model_id = await ray_backend().eval_on_cluster(store, run_id, config, self.tasks, request.settings(),
                                                       planned, self.notify)  # fmt: skip
        summarize(store, run_id, self.tasks, model_id)
