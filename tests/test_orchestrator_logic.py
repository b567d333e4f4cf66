"""The orchestrator's scheduling, retries, resume and gate, in milliseconds: the toy echo environment on memory
sandboxes (tests/memory_sandbox.py) and a scripted model (tests/scripted_model.py), with a real SQLite store.
What needs the real things (real episodes rescored the same, a killed process resumed, a model server killed
mid-run) is tested in tests/test_eval.py and tests/test_racing_episodes.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cycleqd.db import open_store
from cycleqd.db.store import Store
from cycleqd.display import EvalView, _RunWatch
from cycleqd.envs.episode import Episode, EpisodeStatus
from cycleqd.envs.registry import EpisodeSettings, Runtime, register, unregister
from cycleqd.eval.orchestrator import EpisodeGate, EpisodeResult, EpisodeRound, EvalSettings, Orchestrator, summarize
from cycleqd.eval.runtime import EnvRuntime
from cycleqd.eval.tasks import EvalTask, load_eval_tasks
from cycleqd.monitor.queries.eval_run import episodes_in_flight
from cycleqd.serving.client import ChatReply
from cycleqd.serving.errors import EndpointError
from cycleqd.serving.model_ref import ExternalEndpoint
from tests.echo_environment import EchoEnvironment, EchoEpisode, EchoTask
from tests.memory_sandbox import MemoryStarter
from tests.scripted_model import Messages, ScriptedModel

WORDS = tuple(f"word{i}" for i in range(12))


def repeat_the_word(messages: Messages) -> str:
    return re.findall(r"word\d+", messages[-1]["content"])[-1]


@pytest.fixture
def twelve_words() -> Iterator[list[EvalTask]]:
    env = register(EchoEnvironment(WORDS))
    yield load_eval_tasks([env.name], "builtin", "dev", None)
    unregister(env.name)


async def played(
    store: Store, tasks: list[EvalTask], model: ScriptedModel, settings: EvalSettings, starter: MemoryStarter,
    run_id: str | None = None, on_result: Callable[[EpisodeResult], None] = lambda _: None,
    gate: EpisodeGate | None = None, on_round: Callable[[EpisodeRound], None] = lambda _: None,
) -> tuple[str, int]:  # fmt: skip
    """Run the tasks on memory sandboxes; the run's id and the model row."""
    run_id = run_id or store.create_run("eval", {"test": "orchestrator logic"}).id
    await model.serve(ExternalEndpoint("scripted://", "m"))
    model_id = store.model_id("scripted:m", "scripted")
    async with EnvRuntime.of(tasks, run_id=run_id, max_sandboxes=settings.max_sandboxes,
                             settings=EpisodeSettings(round_limit=1), start_sandbox=starter) as runtime:  # fmt: skip
        orchestrator = Orchestrator(store, run_id, model, model_id, settings, on_result, on_round)
        await orchestrator.run(tasks, runtime, gate)
    return run_id, model_id


async def test_every_episode_runs_once_in_a_fresh_sandbox_never_more_than_concurrency_at_once(
    twelve_words: list[EvalTask], tmp_path: Path
) -> None:
    store = open_store(tmp_path / "logic.db")
    model = ScriptedModel(repeat_the_word, latency_s=0.01)
    starter = MemoryStarter()
    settings = EvalSettings(concurrency=3, repeats=2, max_tokens=8, max_sandboxes=8)
    run_id, model_id = await played(store, twelve_words, model, settings, starter)
    episodes = store.episodes(run_id)
    assert len(episodes) == 24 and len({(e.task_id, e.repeat) for e in episodes}) == 24
    assert all(e.score == 1.0 and e.status == EpisodeStatus.COMPLETED for e in episodes)
    assert model.requests == 24 and model.most_in_flight == 3
    used = [box for box in starter.started if "/tmp/reply.txt" in box.files]
    assert len(used) == 24 and len({box.id for box in used}) == 24  # one sandbox per episode, never reused
    assert starter.live == 0  # every sandbox, spares included, is gone once the runtime closes
    (aggregate,) = summarize(store, run_id, twelve_words, model_id)
    assert (aggregate.episodes, aggregate.errors, aggregate.score) == (24, 0, 1.0)


async def test_environment_errors_are_retried_and_then_stored_without_a_score(
    twelve_words: list[EvalTask], tmp_path: Path
) -> None:
    store = open_store(tmp_path / "retries.db")
    # requests 1-3 fail: the first episode's three attempts (retries=2); request 5 fails once, then succeeds
    model = ScriptedModel(repeat_the_word, fail=lambda n: EndpointError if n in (1, 2, 3, 5) else None)
    settings = EvalSettings(concurrency=1, repeats=1, retries=2, max_tokens=8, max_sandboxes=4)
    run_id, model_id = await played(store, twelve_words[:3], model, settings, MemoryStarter())
    by_task = {e.task_id: e for e in store.episodes(run_id)}
    first, second, third = (by_task[store.task_id(t.env, t.suite, t.split, t.key, t.content_hash)]
                            for t in twelve_words[:3])  # fmt: skip
    assert (first.status, first.score) == (EpisodeStatus.ENV_ERROR, None) and "attempt 3: EndpointError" in first.error
    assert (second.score, third.score) == (1.0, 1.0) and model.failed == [1, 2, 3, 5] and model.requests == 6
    (aggregate,) = summarize(store, run_id, twelve_words[:3], model_id)
    assert (aggregate.episodes, aggregate.errors, aggregate.score) == (3, 1, 1.0)  # an error is not a 0


async def test_a_sandbox_that_fails_to_start_is_an_environment_error_retried(
    twelve_words: list[EvalTask], tmp_path: Path
) -> None:
    store = open_store(tmp_path / "starts.db")
    starter = MemoryStarter(failures=2)
    settings = EvalSettings(concurrency=1, repeats=1, retries=2, max_tokens=8, max_sandboxes=1)
    run_id, _ = await played(store, twelve_words[:2], ScriptedModel(repeat_the_word), settings, starter)
    assert [e.score for e in store.episodes(run_id)] == [1.0, 1.0]
    assert starter.attempts >= 4 and starter.live == 0


async def test_a_rerun_plays_only_what_the_store_lacks(twelve_words: list[EvalTask], tmp_path: Path) -> None:
    store = open_store(tmp_path / "resume.db")
    settings = EvalSettings(concurrency=2, repeats=1, max_tokens=8, max_sandboxes=6)
    first = ScriptedModel(repeat_the_word)
    stopped = asyncio.Event()

    def stop_after_five(result: EpisodeResult) -> None:
        if len(store.episodes(result_run[0])) >= 5:
            stopped.set()

    result_run = [store.create_run("eval", {"test": "resume"}).id]
    running = asyncio.create_task(played(store, twelve_words, first, settings, MemoryStarter(), result_run[0],
                                         on_result=stop_after_five))  # fmt: skip
    await asyncio.wait_for(stopped.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    kept = len(store.episodes(result_run[0]))
    assert 5 <= kept < 12
    again = ScriptedModel(repeat_the_word)
    await played(store, twelve_words, again, settings, MemoryStarter(), result_run[0])
    episodes = store.episodes(result_run[0])
    assert len(episodes) == 12 and len({e.task_id for e in episodes}) == 12
    assert again.requests == 12 - kept  # nothing stored is played again, nothing is missing


class SettleAfter:
    """A gate that picks episodes last first and settles once it has seen `n` results."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.picked = n, [], []

    def pick(self, todo: list[EvalTask]) -> int:
        assert not self.settled(), "an episode was started after the gate settled"
        self.picked.append(todo[-1].key)
        return len(todo) - 1

    def observe(self, result: EpisodeResult) -> None:
        self.seen.append(result.task.key)

    def settled(self) -> bool:
        return len(self.seen) >= self.n


async def test_a_settled_gate_stops_the_run_and_what_was_running_leaves_nothing(
    twelve_words: list[EvalTask], tmp_path: Path
) -> None:
    store = open_store(tmp_path / "gate.db")
    starter = MemoryStarter()
    settings = EvalSettings(concurrency=3, repeats=1, max_tokens=8, max_sandboxes=8)
    gate = SettleAfter(4)
    model = ScriptedModel(repeat_the_word, latency_s=0.01)
    run_id, _ = await played(store, twelve_words, model, settings, starter, gate=gate)
    keys = {store.task_id(t.env, t.suite, t.split, t.key, t.content_hash): t.key for t in twelve_words}
    stored = [keys[e.task_id] for e in store.episodes(run_id)]
    assert gate.picked[:3] == [t.key for t in reversed(twelve_words[-3:])]  # the gate chose the order
    assert 4 <= len(gate.seen) <= len(gate.picked) < 12  # it settled with episodes never begun
    # What it saw is stored; beside it at most the episodes whose commit was under way when it settled (a commit
    # is finished, never cut), each whole; the cancelled ones left nothing, and no sandbox.
    assert set(gate.seen) <= set(stored) <= set(gate.picked)
    assert all(e.score == 1.0 for e in store.episodes(run_id))
    assert model.requests <= len(gate.picked) and starter.live == 0


async def cancelled_run(
    store: Store, tasks: list[EvalTask], settings: EvalSettings, loop_steps: int | None
) -> tuple[str, MemoryStarter, list[str]]:
    """A run cancelled after that many steps of the event loop (None: after three results): its id, its
    sandboxes, and the warnings of coroutines never awaited once garbage was collected."""
    starter, results = MemoryStarter(), []
    model = ScriptedModel(repeat_the_word, latency_s=0.01)

    def interrupt_after_three(result: EpisodeResult) -> None:
        results.append(result)
        if loop_steps is None and len(results) == 3:
            run.cancel()

    run_id = store.create_run("eval", {"test": "cancelled"}).id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = asyncio.create_task(played(store, tasks, model, settings, starter, run_id, interrupt_after_three))
        for _ in range(loop_steps or 0):
            await asyncio.sleep(0)
        if loop_steps is not None:
            run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        gc.collect()
    return run_id, starter, [str(w.message) for w in caught if "never awaited" in str(w.message)]


async def test_a_run_cancelled_at_any_moment_leaves_no_episode_unstarted_behind(
    twelve_words: list[EvalTask], tmp_path: Path
) -> None:
    """Ctrl-C on the plain path, at each of the first steps of the event loop and after three results: the
    episodes queued behind the pool are dropped, never left as coroutines that Python finds never awaited (a
    RuntimeWarning at some later garbage collection), and what was stored is whole."""
    store = open_store(tmp_path / "cancelled.db")
    settings = EvalSettings(concurrency=2, repeats=1, max_tokens=8, max_sandboxes=8)
    # Each run's collection looks only at what was made since: the heap the test session built up before (seconds
    # per full collection late in a whole run) is set aside, and a dropped coroutine is new.
    gc.freeze()
    try:
        for loop_steps in [*range(40), None]:
            run_id, starter, never_awaited = await cancelled_run(store, twelve_words, settings, loop_steps)
            assert never_awaited == [], loop_steps
            stored = store.episodes(run_id)
            assert all(e.score == 1.0 for e in stored) and starter.live == 0, loop_steps
            assert 3 <= len(stored) < 12 if loop_steps is None else len(stored) < 12
    finally:
        gc.unfreeze()


# -- episodes in flight and their time limit ---------------------------------------------------------------------


class AgainEpisode(EchoEpisode):
    """The echo episode asked again after each reply, until `rounds` replies: several model turns."""

    def __init__(self, task: EchoTask, sandbox: Any, rounds: int) -> None:
        super().__init__(task, sandbox)
        self.left = rounds

    async def step(self, reply: str) -> str | None:
        await super().step(reply)
        self.left -= 1
        return f"Again, repeat this word: {self.task.word}" if self.left else None


class AgainEnvironment(EchoEnvironment):
    name = "again"

    def __init__(self, rounds: int) -> None:
        super().__init__(WORDS[:1])
        self.rounds = rounds

    @contextlib.asynccontextmanager
    async def open_episode(self, task: EchoTask, runtime: Runtime) -> AsyncIterator[Episode]:
        async with runtime.sandbox("os-default") as sandbox:
            yield AgainEpisode(task, sandbox, self.rounds)


@contextlib.contextmanager
def again_tasks(rounds: int) -> Iterator[list[EvalTask]]:
    env = register(AgainEnvironment(rounds))
    try:
        yield load_eval_tasks([env.name], "builtin", "dev", None)
    finally:
        unregister(env.name)


class HeldModel(ScriptedModel):
    """Its `hold`-th request waits until the test releases it: an episode stays in flight while the test looks."""

    def __init__(self, reply: Callable[[Messages], str], hold: int) -> None:
        super().__init__(reply)
        self.hold, self.holding, self.release = hold, asyncio.Event(), asyncio.Event()

    async def chat(self, messages: Messages, **options: object) -> ChatReply:
        if self.requests + 1 == self.hold:
            self.holding.set()
            await self.release.wait()
        return await super().chat(messages, **options)


async def test_an_episode_in_flight_is_told_stored_and_shown_each_round_until_its_commit(tmp_path: Path) -> None:
    store = open_store(tmp_path / "flight.db")
    view = EvalView(None, _RunWatch("eval", tmp_path / "flight.db", Console()))  # eval's live view, not drawn
    heard: list[object] = []

    def hear(event: object) -> None:
        heard.append(event)
        view(event)

    model = HeldModel(repeat_the_word, hold=3)  # the third reply waits: two are in, the episode is in flight
    settings = EvalSettings(concurrency=1, repeats=1, max_tokens=8, max_sandboxes=4)
    with again_tasks(rounds=3) as tasks:
        run_id = store.create_run("eval", {"test": "in flight"}).id
        running = asyncio.create_task(played(store, tasks, model, settings, MemoryStarter(), run_id, hear,
                                             on_round=hear))  # fmt: skip
        await asyncio.wait_for(model.holding.wait(), 10)
        told = [e for e in heard if isinstance(e, EpisodeRound)]
        assert [(e.env, e.task_key, e.progress.rounds, e.progress.completion_tokens) for e in told] == [
            ("again", "echo-0", 0, 0), ("again", "echo-0", 1, 1), ("again", "echo-0", 2, 2)]  # fmt: skip
        [row] = episodes_in_flight(store, run_id)  # what the monitor reads, as the last round left it
        last = told[-1].progress
        assert (row.env, row.task_key, row.repeat, row.rounds) == ("again", "echo-0", 0, 2)
        assert row.tokens == last.prompt_tokens + last.completion_tokens and row.started_at == last.started_at
        assert view.in_flight_line().startswith("1 in flight · longest: again echo-0, 2 rounds, 2 tokens generated, ")
        assert store.episodes(run_id) == []
        model.release.set()
        await asyncio.wait_for(running, 10)
    [result] = [e for e in heard if isinstance(e, EpisodeResult)]
    assert result.key == told[0].key and heard[-1] is result  # the result ends what the rounds began
    assert [e.progress.rounds for e in heard if isinstance(e, EpisodeRound)] == [0, 1, 2, 3]
    assert episodes_in_flight(store, run_id) == [] and view.in_flight_line() == ""
    [episode] = store.episodes(run_id)
    assert (episode.status, episode.score, episode.completion_tokens) == (EpisodeStatus.COMPLETED, 1.0, 3)


async def test_a_cancelled_episode_leaves_no_row_in_flight(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cancelled.db")
    model = HeldModel(repeat_the_word, hold=2)
    settings = EvalSettings(concurrency=1, repeats=1, max_tokens=8, max_sandboxes=4)
    with again_tasks(rounds=3) as tasks:
        run_id = store.create_run("eval", {"test": "in flight, cancelled"}).id
        running = asyncio.create_task(played(store, tasks, model, settings, MemoryStarter(), run_id))
        await asyncio.wait_for(model.holding.wait(), 10)
        assert [row.rounds for row in episodes_in_flight(store, run_id)] == [1]
        running.cancel()  # Ctrl-C: the episode is not stored, and no longer in flight
        with pytest.raises(asyncio.CancelledError):
            await running
    assert episodes_in_flight(store, run_id) == [] and store.episodes(run_id) == []


async def test_an_episode_past_its_time_limit_ends_as_episode_timeout_scored_0_with_its_transcript(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "timeout.db")
    starter = MemoryStarter()
    model = ScriptedModel(repeat_the_word, latency_s=0.05)  # a model that never stops: it only ever repeats
    settings = EvalSettings(concurrency=1, repeats=1, max_tokens=8, max_sandboxes=4,
                            episode=EpisodeSettings(time_limit_s=0.5))  # fmt: skip
    with again_tasks(rounds=1000) as tasks:
        run_id, model_id = await played(store, tasks, model, settings, starter)
        (aggregate,) = summarize(store, run_id, tasks, model_id)
    [episode] = store.episodes(run_id)
    assert (episode.status, episode.score, episode.error) == (EpisodeStatus.EPISODE_TIMEOUT, 0.0, None)
    assert "ran past its time limit of 0.5 s" in episode.verdict["detail"]
    replies = [m["content"] for m in episode.transcript if m["role"] == "assistant"]
    assert episode.rounds == len(replies) >= 2 and set(replies) == {"word0"}  # what it said before the limit, kept
    assert model.requests in (episode.rounds, episode.rounds + 1)  # the reply under way at the limit is lost
    assert episode.completion_tokens == episode.rounds and episode.context_messages == 1
    assert 0.5 <= (episode.finished_at - episode.started_at).total_seconds() < 5
    assert starter.live == 0 and episodes_in_flight(store, run_id) == []  # its sandbox went, its row in flight too
    assert (aggregate.episodes, aggregate.errors, aggregate.score) == (1, 0, 0.0)  # the agent's failure, scored
