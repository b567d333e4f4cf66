"""Racing through real episodes: the orchestrator's gate stops a child cleanly (episodes still running are
cancelled, their sandboxes released, nothing half-stored, a later run resumes the rest without counting anything
twice), and a child whose stored episodes already rule it out is not served again on a resume.

The model is the fixed-latency OpenAI-compatible server of bench/ (a test instrument: it answers every request with
the same text after a delay, so that episodes are in flight when the gate settles); sandboxes are real."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack as ExitStack
from pathlib import Path

import pytest

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.envs.episode import EpisodeStatus
from cycleqd.envs.registry import environment
from cycleqd.eval.orchestrator import EpisodeResult, EvalSettings, Orchestrator
from cycleqd.eval.runtime import EnvRuntime
from cycleqd.eval.tasks import EvalTask, load_eval_tasks
from cycleqd.evolution.evaluator import EpisodeEvaluator
from cycleqd.evolution.loop import CandidateUnderTest
from cycleqd.evolver.archive import Elite, GridArchive
from cycleqd.evolver.config import parse_config
from cycleqd.evolver.racing import Race
from cycleqd.serving.client import ServedModel
from cycleqd.serving.external import ExternalManager
from cycleqd.serving.model_ref import ExternalEndpoint, ModelRef
from cycleqd.serving.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent


class StopAfter:
    """A gate that settles after `limit` results (plan order)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.results: list[EpisodeResult] = []

    def pick(self, todo: list[EvalTask]) -> int:
        return 0

    def observe(self, result: EpisodeResult) -> None:
        self.results.append(result)

    def settled(self) -> bool:
        return self.limit is not None and len(self.results) >= self.limit


async def eventually(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Whether `condition` holds within `timeout_s` (sandboxes are removed in the background after release)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


@pytest.fixture
async def fixed_server() -> ExternalEndpoint:  # type: ignore[misc]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fixed_latency_server", "--port", str(port), "--latency-ms", "1500", env=env
    )
    try:
        await asyncio.sleep(2)
        yield ExternalEndpoint(f"http://127.0.0.1:{port}/v1", "fixed")
    finally:
        server.terminate()
        await server.wait()


async def test_a_settled_gate_cancels_running_episodes_cleanly_and_a_rerun_finishes_the_rest(
    os_image: str, fixed_server: ExternalEndpoint, tmp_path: Path
) -> None:
    tasks = load_eval_tasks(["coding"], "builtin", "dev", 3)
    settings = EvalSettings(concurrency=3, repeats=3, max_tokens=16, max_sandboxes=4)
    planned = len(tasks) * settings.repeats
    store = open_store(tmp_path / "race.db")
    run = store.create_run("eval", {})
    async with EnvRuntime.of(tasks, run_id=run.id, max_sandboxes=4, settings=settings.episode) as runtime:
        async with ExternalManager(fixed_server) as manager:
            await manager.serve(fixed_server)
            model_id = store.model_id(fixed_server.identity(), fixed_server.label)
            gate = StopAfter(2)
            await Orchestrator(store, run.id, manager, model_id, settings).run(tasks, runtime, gate)
            assert len(gate.results) == 2
            stored = store.episodes(run.id)
            # the one or two episodes running when the gate settled were stopped: at most one was far enough to
            # commit (its commit is not interrupted), and whatever is stored is whole
            assert 2 <= len(stored) <= 3 < planned
            assert all(e.status and e.transcript and e.finished_at for e in stored)
            await runtime.pool.wait_warm()
            (image,) = environment(tasks[0].env).images()  # coding tasks: one image
            # no sandbox is still held by a stopped episode (removals run in the background: give them time)
            assert await eventually(lambda: runtime.pool.live == runtime.pool.idle(image))

            rest = StopAfter(None)
            await Orchestrator(store, run.id, manager, model_id, settings).run(tasks, runtime, rest)
            keys = [(e.task_id, e.repeat) for e in store.episodes(run.id)]
            assert len(keys) == len(set(keys)) == planned  # the rest played, nothing twice
            assert len(rest.results) == planned - len(stored)


async def test_a_child_ruled_out_by_its_stored_episodes_is_not_served_again(tmp_path: Path) -> None:
    """A process killed after a child's last needed episode: on resume its race is settled from the store."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    config = parse_config({"base": "model", "tasks": [
        {"name": "code", "env": "coding", "expert": "model", "limit": 2},
        {"name": "shell", "env": "os", "expert": "model", "limit": 2},
    ]}, "<test>", tmp_path)  # fmt: skip
    store = open_store(tmp_path / "resume.db")
    run = store.create_run("evolve", config.snapshot())
    evaluator = EpisodeEvaluator(store, run.id, config, None, tmp_path / "ckpt", [], None)  # type: ignore[arg-type]
    model_id = store.model_id("genome:abc", str(tmp_path / "ckpt" / "abc"), "abc")
    for spec in config.tasks:  # one failed episode of each task, as a killed process left them
        task = evaluator.tasks[(spec.name, False)][0]
        task_id = store.task_id(task.env, task.suite, task.split, task.key, task.content_hash)
        store.record_episode(EpisodeRecord(run.id, model_id, task_id, 0, EpisodeStatus.COMPLETED, 0.0))
    # every cell holds a perfect elite: a child that failed one episode of a task can never beat it
    archives = [GridArchive(k, ("code", "shell"), 1, ((0.0, 1.0),)) for k in range(2)]
    for archive in archives:
        archive.offer(Elite(1, "e", (1.0, 1.0)))
    race = Race(archives)
    model, scores = await evaluator.evaluate(0, CandidateUnderTest(9, "child", None, "abc"), False, race=race)
    assert (model, scores) == (model_id, {})  # no server was asked (there is none)
    assert race.rejected and race.played == 2 and race.planned == 4


class AnyCheckpointAnswersFixed(ExternalManager):
    """Test instrument: 'serves' any checkpoint by answering with the fixed-latency server's fixed text."""

    async def _load(self, ref: ModelRef) -> ServedModel:
        return ServedModel(self.endpoint.model, f"fixed:{ref.label}")


async def test_a_raced_child_stops_mid_episodes_through_the_evaluator(
    os_image: str, fixed_server: ExternalEndpoint, tmp_path: Path
) -> None:
    """EpisodeEvaluator end to end: every answer fails, archives hold perfect elites, so one failed episode of each
    task rules the child out; the other episodes are never played and nothing stays held."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    config = parse_config({"base": "model", "eval": {"concurrency": 2}, "tasks": [
        {"name": "code", "env": "coding", "expert": "model", "limit": 3},
        {"name": "code2", "env": "coding", "expert": "model", "suite": "builtin", "selection_split": "train",
         "limit": 3},
    ]}, "<test>", tmp_path)  # fmt: skip
    store = open_store(tmp_path / "evaluator.db")
    run = store.create_run("evolve", config.snapshot())
    child = EvolutionStore(store, run.id).add_candidate("child", 1, 0, genome_hash="abc")
    archives = [GridArchive(k, ("code", "code2"), 1, ((0.0, 1.0),)) for k in range(2)]
    for archive in archives:
        archive.offer(Elite(1, "e", (1.0, 1.0)))
    async with ExitStack() as stack:
        manager = await stack.enter_async_context(AnyCheckpointAnswersFixed(fixed_server))
        evaluator = EpisodeEvaluator(store, run.id, config, None, tmp_path / "ckpt", [manager], None)  # type: ignore[arg-type]
        tasks = evaluator.all_tasks()
        runtime = EnvRuntime.of(tasks, run_id=run.id, max_sandboxes=4, settings=evaluator.settings.episode)
        evaluator.runtime = await stack.enter_async_context(runtime)
        race = Race(archives)
        under = CandidateUnderTest(child.id, "child", None, "abc", checkpoint=folder)
        model_id, _ = await evaluator.evaluate(0, under, False, race=race)
        assert race.rejected and race.planned == 6 and 2 <= race.played < 6
        stored = [e for e in store.episodes(run.id) if e.model_id == model_id]
        assert race.played <= len(stored) <= race.played + 1 and all(e.score == 0.0 for e in stored)
        await runtime.pool.wait_warm()
        images = {i for t in tasks for i in environment(t.env).images()}
        assert await eventually(lambda: runtime.pool.live == sum(runtime.pool.idle(i) for i in images))
