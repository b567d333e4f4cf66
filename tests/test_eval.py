"""`cycleqd eval` end to end: the real SmolLM2 through transformers serve, real sandboxes, a real MariaDB and a
real SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cycleqd.db import open_store
from cycleqd.envs.registry import EpisodeSettings
from cycleqd.eval.orchestrator import EvalSettings, Orchestrator, summarize
from cycleqd.eval.runtime import EnvRuntime
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.serving.resolve import gpu_available
from cycleqd.serving.transformers_serve import default_options
from tests.cli_process import CYCLEQD, CYCLEQD_HERE

FAST = EvalSettings(concurrency=3, repeats=2, max_tokens=48, max_sandboxes=6, episode=EpisodeSettings(round_limit=2))


async def rescore(runtime: EnvRuntime, task, transcript: list[dict[str, str]]) -> float:  # noqa: ANN001
    """Replay the stored replies through a fresh episode: the score must come out the same."""
    replies = [m["content"] for m in transcript if m["role"] == "assistant"]
    async with runtime.episode(task) as episode:
        await episode.begin()
        for reply in replies:
            if await episode.step(reply) is None:
                break
        return (await episode.outcome()).score


@pytest.mark.slow
async def test_every_episode_is_stored_once_and_rescores_the_same(tserve, default_model, tmp_path: Path) -> None:  # noqa: ANN001
    await tserve.serve(default_model)
    store = open_store(tmp_path / "eval.db")
    tasks = load_eval_tasks(["os", "db", "coding"], "builtin", "dev", limit=1)
    run = store.create_run("eval", {"test": True})
    model_id = store.model_id(default_model.identity(), str(default_model.path))
    orchestrator = Orchestrator(store, run.id, tserve, model_id, FAST)
    await orchestrator.run(tasks)
    episodes = store.episodes(run.id)
    assert len(episodes) == len(tasks) * FAST.repeats == 6
    assert len({(e.model_id, e.task_id, e.repeat) for e in episodes}) == 6
    assert all(e.score is not None and e.transcript[-1]["role"] in ("assistant", "user") for e in episodes)
    assert all(e.prompt_tokens > 0 and e.completion_tokens > 0 for e in episodes)
    by_row = {store.task_id(t.env, t.suite, t.split, t.key, t.content_hash): t for t in tasks}
    async with EnvRuntime.of(tasks, run_id=run.id, max_sandboxes=4, settings=FAST.episode) as runtime:
        for episode in episodes:
            assert await rescore(runtime, by_row[episode.task_id], episode.transcript) == episode.score
    aggregates = summarize(store, run.id, tasks, model_id)
    assert {(a.env, a.episodes, a.errors) for a in aggregates} == {("os", 2, 0), ("db", 2, 0), ("coding", 2, 0)}
    # A second pass over the same run finds nothing left to do.
    assert orchestrator.plan(tasks) == []


def wait_for_episodes(db: Path, at_least: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            store = open_store(db)
            for run in store.list_runs():
                if len(store.episodes(run.id)) >= at_least:
                    return run.id
        time.sleep(0.5)
    raise AssertionError(f"no run reached {at_least} episodes in {timeout_s} s")


@pytest.mark.slow
def test_a_killed_eval_resumes_without_double_counting(default_model, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "killed.db"
    # One episode at a time: under continuous batching in bf16 a greedy answer can change with the requests that
    # share its forward passes (a DB prompt prefilled while a coding reply decoded), and a resumed run never
    # repeats the whole run's schedule; one request in flight makes both runs' forward passes the same.
    args = ["eval", "--tasks", "coding,db", "--limit", "2", "--max-tokens", "48", "--concurrency", "1", "--db", str(db)]
    first = subprocess.Popen([CYCLEQD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run_id = wait_for_episodes(db, 1, 300)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    before = len(open_store(db).episodes(run_id))
    assert 1 <= before < 4
    resumed = subprocess.run([CYCLEQD, "eval", "--resume", run_id, "--db", str(db), "--json"], capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    episodes = open_store(db).episodes(run_id)
    assert len(episodes) == 4 and len({(e.task_id, e.repeat) for e in episodes}) == 4
    run = open_store(db).get_run(run_id)
    assert run.status == "completed"
    device = "cuda" if gpu_available() else "cpu"  # the run keeps how its greedy answers were computed
    assert run.config["decoding"] == f"transformers-serve --device {device} {default_options(device).describe()}"
    shown = subprocess.run([CYCLEQD, "show", run_id, "--db", str(db), "--json"], capture_output=True, text=True)
    assert '"episodes": 4' in shown.stdout
    # The same eval never interrupted: greedy decoding, so the same transcripts, scores and table.
    whole_db = tmp_path / "whole.db"
    whole = subprocess.run([CYCLEQD, *args[:-1], str(whole_db), "--json"], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    whole_id = json.loads(whole.stdout)["run"]
    assert _same_scores(json.loads(resumed.stdout)["results"], json.loads(whole.stdout)["results"])
    assert _by_task(open_store(db), run_id) == _by_task(open_store(whole_db), whole_id)


def _by_task(store, run_id: str) -> dict:  # noqa: ANN001
    keys = {t.id: t.task_key for t in store.tasks()}
    return {(keys[e.task_id], e.repeat): (e.status, e.score, e.transcript) for e in store.episodes(run_id)}


def _same_scores(a: list[dict], b: list[dict]) -> bool:
    # wall times differ between the two runs; everything else must not
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in a]
    return strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in b]


def test_unknown_run_and_bad_environment_are_clear(tmp_path: Path) -> None:
    open_store(tmp_path / "x.db").engine.dispose()
    done = subprocess.run([*CYCLEQD_HERE, "show", "nope", "--db", str(tmp_path / "x.db")], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and "no run 'nope'" in done.stderr
    nowhere = subprocess.run([*CYCLEQD_HERE, "runs", "--db", str(tmp_path / "no" / "x.db")], capture_output=True,
                             text=True)  # fmt: skip
    assert nowhere.returncode == 2 and "no such store" in nowhere.stderr
    assert not (tmp_path / "no").exists()  # a reading command creates nothing
    with pytest.raises(ValueError, match="unknown environment 'web'"):
        load_eval_tasks(["web"], "builtin", "dev", None)
    with pytest.raises(ValueError, match="has no split 'val'; it has: dev, test, train"):
        load_eval_tasks(["os"], "builtin", "val", None)


@pytest.mark.slow
async def test_a_model_server_killed_mid_run_only_costs_retries(default_model, tmp_path: Path) -> None:  # noqa: ANN001
    from cycleqd.serving.client import ClientSettings
    from cycleqd.serving.transformers_serve import TransformersServeManager

    store = open_store(tmp_path / "server-killed.db")
    tasks = load_eval_tasks(["coding"], "builtin", "dev", limit=4)
    run = store.create_run("eval", {"test": "server killed"})
    model_id = store.model_id(default_model.identity(), str(default_model.path))
    settings = EvalSettings(concurrency=2, repeats=1, retries=3, max_tokens=64, max_sandboxes=4)
    async with TransformersServeManager(client_settings=ClientSettings(retries=2, backoff_s=0.2)) as manager:
        await manager.serve(default_model)
        first_episode = asyncio.Event()
        orchestrator = Orchestrator(store, run.id, manager, model_id, settings, on_result=lambda _: first_episode.set())
        running = asyncio.create_task(orchestrator.run(tasks))
        await asyncio.wait_for(first_episode.wait(), 300)
        assert manager.process is not None and manager.process.pid is not None
        os.killpg(manager.process.pid, signal.SIGKILL)
        await running
        assert manager.restarts >= 1
    episodes = store.episodes(run.id)
    assert len(episodes) == 4
    assert [e.status for e in episodes if e.score is None] == []  # broken episodes were retried, not failed
