"""The API where an event loop already runs (a Jupyter cell, an async application): `evaluate` and `evolve` run
their loop on a worker thread, `evaluate_async` and `evolve_async` on the caller's, and neither leaves a coroutine
never awaited. The evaluations are real ones, in milliseconds: the echo environment on memory sandboxes
(tests/memory_sandbox.py), a scripted model (tests/scripted_model.py), a real SQLite store. The evolutions replace
their stages (checkpoints, SVD cache, loop) with stubs: what is tested is how the loop is run."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import cycleqd
from cycleqd.db import open_store
from cycleqd.db.schema import RunStatus
from cycleqd.errors import RunInterrupted
from cycleqd.eval import evaluate as evaluate_module
from cycleqd.eval import runtime as runtime_module
from cycleqd.eval.orchestrator import EpisodeResult
from cycleqd.evolution import run as evolve_module
from cycleqd.evolver.config import EvolveConfig, TaskSpec
from cycleqd.serving.model_ref import ExternalEndpoint
from tests.echo_environment import EchoEnvironment
from tests.memory_sandbox import MemoryStarter
from tests.scripted_model import Messages, ScriptedModel

WORDS = ("banana", "river", "stone", "cloud")


def repeat_the_word(messages: Messages) -> str:
    return messages[-1]["content"].split()[-1]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, echo_environment: EchoEnvironment) -> list[ScriptedModel]:
    """`cycleqd.evaluate` with no Docker and no server: memory sandboxes and a scripted model (the ones it made)."""
    echo_environment.words = WORDS
    models: list[ScriptedModel] = []

    def scripted(*_: object, **__: object) -> ScriptedModel:
        models.append(ScriptedModel(repeat_the_word, latency_s=0.02))
        return models[-1]

    monkeypatch.setattr(evaluate_module, "build_images", lambda *_: None)
    monkeypatch.setattr(evaluate_module, "docker_client", lambda: None)
    monkeypatch.setattr(evaluate_module, "resolve_model", lambda *_, **__: ExternalEndpoint("scripted://", "m"))
    monkeypatch.setattr(evaluate_module, "manager_for", scripted)
    monkeypatch.setattr(runtime_module, "docker_starter", lambda *_: MemoryStarter())
    return models


def echo_request() -> cycleqd.EvalRequest:
    return cycleqd.EvalRequest(tasks=("echo",), concurrency=1, max_tokens=8, rounds=1)


@contextmanager
def nothing_left_unawaited() -> Iterator[None]:
    """A coroutine never awaited warns when it is collected (from __del__, so the warning cannot be raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


class Seen:
    """The events a run sent, and the threads it sent its episodes' results from (its loop's)."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.threads: set[str] = set()

    def __call__(self, event: object) -> None:
        self.events.append(event)
        if isinstance(event, EpisodeResult):
            self.threads.add(threading.current_thread().name)


def assert_all_echoed(result: cycleqd.EvalResult, db: Path) -> None:
    score = result.score("echo")
    assert (score.score, score.episodes, score.errors, dict(score.metrics)) == (1.0, 4, 0, {"echoed": 4.0})
    assert open_store(db).get_run(result.run_id).status == RunStatus.COMPLETED


async def test_evaluate_called_inside_a_running_loop_runs_its_own_on_a_worker_thread(
    offline: list[ScriptedModel], tmp_path: Path
) -> None:
    seen = Seen()
    with nothing_left_unawaited():
        result = cycleqd.evaluate(echo_request(), db=tmp_path / "in-loop.db", on_event=seen)
    assert_all_echoed(result, tmp_path / "in-loop.db")
    assert sum(isinstance(e, EpisodeResult) for e in seen.events) == 4
    assert seen.threads == {"cycleqd-run"} and offline[0].requests == 4


async def test_evaluate_async_runs_on_the_callers_loop(offline: list[ScriptedModel], tmp_path: Path) -> None:
    seen = Seen()
    with nothing_left_unawaited():
        result = await cycleqd.evaluate_async(echo_request(), db=tmp_path / "async.db", on_event=seen)
    assert_all_echoed(result, tmp_path / "async.db")
    assert seen.threads == {threading.current_thread().name} and offline[0].requests == 4
    # A finished run resumed: read back, the same scores, nothing played.
    again = await cycleqd.evaluate_async(echo_request(), db=tmp_path / "async.db", resume=result.run_id)
    assert again.scores == result.scores and len(offline) == 1


def test_evaluate_with_no_loop_still_runs_on_this_thread(offline: list[ScriptedModel], tmp_path: Path) -> None:
    seen = Seen()
    result = cycleqd.evaluate(echo_request(), db=tmp_path / "plain.db", on_event=seen)
    assert_all_echoed(result, tmp_path / "plain.db")
    assert seen.threads == {threading.current_thread().name}


async def test_cancelling_evaluate_async_leaves_the_run_interrupted_and_resumable(
    offline: list[ScriptedModel], tmp_path: Path
) -> None:
    db = tmp_path / "cancelled.db"
    first = asyncio.Event()
    seen = Seen()

    def on_event(event: object) -> None:
        seen(event)
        if isinstance(event, EpisodeResult):
            first.set()

    run = asyncio.create_task(cycleqd.evaluate_async(echo_request(), db=db, on_event=on_event))
    await first.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    (stopped,) = open_store(db).list_runs()
    assert stopped.status == RunStatus.INTERRUPTED and 1 <= len(open_store(db).episodes(stopped.id)) < 4
    resumed = await cycleqd.evaluate_async(echo_request(), db=db, resume=stopped.id)
    assert_all_echoed(resumed, db)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_a_signal_while_evaluate_waits_on_its_worker_thread_interrupts_the_run(
    offline: list[ScriptedModel], tmp_path: Path, signum: signal.Signals
) -> None:
    """No signal handler can be set off the main thread: the waiting (main) thread must pass Ctrl-C and SIGTERM on
    to the run's loop, so the run stops as the CLI's does, and then give the application its handlers back."""
    db = tmp_path / "stopped.db"
    main = threading.main_thread().ident
    assert main is not None

    def signal_after_the_first_episode(event: object) -> None:
        if isinstance(event, EpisodeResult) and event.task.key == "echo-0":
            signal.pthread_kill(main, signum)

    reached_the_application: list[int] = []
    before = signal.signal(signum, lambda n, _: reached_the_application.append(n))
    try:
        with nothing_left_unawaited(), pytest.raises(RunInterrupted) as stopped:
            cycleqd.evaluate(echo_request(), db=db, on_event=signal_after_the_first_episode)
        signal.pthread_kill(main, signum)  # the application's handler is back
    finally:
        signal.signal(signum, before)
    assert reached_the_application == [signum]
    run = open_store(db).get_run(stopped.value.run_id or "")
    assert run is not None and run.status == RunStatus.INTERRUPTED
    assert 1 <= len(open_store(db).episodes(run.id)) < 4 and offline[0].in_flight == 0


def test_evaluate_from_a_thread_that_is_not_the_main_one(offline: list[ScriptedModel], tmp_path: Path) -> None:
    """A web application's worker thread: no loop, and no signal handler may be set there."""
    done: list[cycleqd.EvalResult | BaseException] = []

    def call() -> None:
        try:
            done.append(cycleqd.evaluate(echo_request(), db=tmp_path / "thread.db"))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            done.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    (result,) = done
    assert isinstance(result, cycleqd.EvalResult), result
    assert_all_echoed(result, tmp_path / "thread.db")


@pytest.fixture
def stub_stages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """`cycleqd.evolve` with its stages stubbed: the threads its loop ran on."""
    loop_threads: list[str] = []

    async def one_generation(*_: object) -> list[Any]:
        await asyncio.sleep(0)
        loop_threads.append(threading.current_thread().name)
        return []

    monkeypatch.setattr(evolve_module, "_check_inputs", lambda *_: None)
    monkeypatch.setattr(evolve_module, "_prepare", lambda *_: None)
    monkeypatch.setattr(evolve_module, "_evolve", one_generation)
    monkeypatch.setattr(evolve_module, "_final_model", lambda *_: tmp_path / "final-model")
    monkeypatch.setattr(evolve_module, "run_final_intervals", lambda *_: None)
    return loop_threads


def a_config(tmp_path: Path) -> EvolveConfig:
    return EvolveConfig(base=str(tmp_path / "base"), tasks=(TaskSpec("echo", "echo", str(tmp_path / "expert")),))


async def test_evolve_inside_a_running_loop_and_evolve_async_both_complete(
    stub_stages: list[str], tmp_path: Path
) -> None:
    db = tmp_path / "evolve.db"
    with nothing_left_unawaited():
        in_loop = cycleqd.evolve(a_config(tmp_path), db=db)
        awaited = await cycleqd.evolve_async(a_config(tmp_path), db=db)
    assert stub_stages == ["cycleqd-run", threading.current_thread().name]
    assert in_loop.final_model == awaited.final_model == tmp_path / "final-model"
    statuses = {run.id: run.status for run in open_store(db).list_runs()}
    assert statuses == {in_loop.run_id: RunStatus.COMPLETED, awaited.run_id: RunStatus.COMPLETED}


async def test_cancelling_evolve_async_leaves_the_run_interrupted(
    stub_stages: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    looping = asyncio.Event()

    async def forever(*_: object) -> list[Any]:
        looping.set()
        await asyncio.Event().wait()
        return []

    monkeypatch.setattr(evolve_module, "_evolve", forever)
    db = tmp_path / "evolve.db"
    run = asyncio.create_task(cycleqd.evolve_async(a_config(tmp_path), db=db))
    await looping.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [r.status for r in open_store(db).list_runs()] == [RunStatus.INTERRUPTED]


def test_the_async_names_are_exported_lazily() -> None:
    assert {"evaluate_async", "evolve_async"} <= set(cycleqd.__all__) <= set(dir(cycleqd))
    assert all(asyncio.iscoroutinefunction(getattr(cycleqd, n)) for n in ("evaluate_async", "evolve_async"))
    assert re.search(r"evaluate_async", cycleqd.__doc__ or "")
