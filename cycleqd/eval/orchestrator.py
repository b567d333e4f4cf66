"""The asyncio orchestrator of `cycleqd eval`: every (task, repeat) becomes an episode, at most `concurrency` at
once (asyncio-pool); sandboxes are bounded by the pool's cap, model requests by the client's.

An episode: acquire a sandbox (or a database) → begin → (model reply → step)* → outcome → commit → release.
It is committed the moment it ends. While it runs, its rounds and tokens so far are written to the store as it
begins and after each model reply (`episodes_in_flight`, read by the monitor) and sent as `EpisodeRound` events;
the commit removes that row in its own transaction. Past its wall-clock limit (`EpisodeSettings.time_limit_s`,
from the environment's first messages) an episode ends as `episode_timeout`, scored 0, with its transcript so far.
Environment errors (an init that failed, a server that died under a request, a lost engine) are retried `retries`
times, then recorded with status env_error and no score; a model that answers badly simply scores 0. Any other
exception is a bug: it is never swallowed — the run raises it once the episodes in flight are done. On resume,
what the store already holds is skipped.

A gate (an evolution racing a child) may choose which episode starts next and stop the run early: the episodes
still running are then cancelled (their sandboxes released by their context managers, nothing of them stored),
and those not started never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from asyncio_pool import AioPool
from sqlalchemy.exc import OperationalError

from cycleqd.db.schema import Aggregate
from cycleqd.db.scores import ScoreTally
from cycleqd.db.store import DuplicateEpisodeError, EpisodeKey, EpisodeProgress, EpisodeRecord, Store
from cycleqd.envs.episode import AgentProtocol, Episode, EpisodeStatus, Message, Outcome
from cycleqd.envs.errors import EpisodeSetupError
from cycleqd.envs.registry import EPISODE_TIME_LIMIT_S, EpisodeSettings, environment
from cycleqd.eval.runtime import EnvRuntime
from cycleqd.eval.tasks import EvalTask
from cycleqd.sandboxes.errors import SandboxError
from cycleqd.serving.errors import EndpointError, ServerDiedError
from cycleqd.serving.manager import ServerManager

log = logging.getLogger(__name__)
ENV_ERRORS = (EpisodeSetupError, ServerDiedError, EndpointError, SandboxError)


@dataclass(frozen=True)
class Sampling:
    """How replies are drawn: greedy unless the user asked otherwise; stored with the run."""

    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None

    def options(self) -> dict[str, float | int]:
        """The chat-completions fields to send: the temperature always (0 = greedy), the others when set."""
        chosen = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        return {k: v for k, v in chosen.items() if v is not None}


@dataclass(frozen=True)
class EvalSettings:
    concurrency: int = 4
    repeats: int = 1
    retries: int = 2
    max_tokens: int = 512
    max_sandboxes: int = 8
    episode: EpisodeSettings = field(default_factory=EpisodeSettings)
    sampling: Sampling = field(default_factory=Sampling)

    @classmethod
    def sized(
        cls, *, concurrency: int, repeats: int, max_tokens: int, rounds: int | None, sampling: Sampling | None = None,
        time_limit_s: float = EPISODE_TIME_LIMIT_S, protocol: AgentProtocol = AgentProtocol.TEXT,
        env_protocols: dict[str, AgentProtocol] | None = None,
    ) -> EvalSettings:  # fmt: skip
        """The settings of a run asked for these counts (`cycleqd eval` and an evolution's eval block alike):
        two sandboxes per concurrent episode, so a warm spare is ready while one is being torn down, and two more,
        so that one episode at a time too has starts in flight while the last sandbox goes away."""
        return cls(concurrency=concurrency, repeats=repeats, max_tokens=max_tokens,
                   max_sandboxes=concurrency * 2 + 2,
                   episode=EpisodeSettings(round_limit=rounds, time_limit_s=time_limit_s, protocol=protocol,
                                           env_protocols=tuple(sorted((env_protocols or {}).items()))),
                   sampling=sampling or Sampling())  # fmt: skip


@dataclass
class EpisodeResult:
    task: EvalTask
    repeat: int
    status: str
    score: float | None
    seconds: float
    key: EpisodeKey | None = None  # the key of the `EpisodeRound`s it ends


@dataclass(frozen=True)
class EpisodeRound:
    """An episode in flight (an `on_event` event): sent as it begins (round 0) and after each model reply, so that a
    live view shows episodes that have not ended; its `EpisodeResult` (the same key) ends it. No transcript: cheap."""

    key: EpisodeKey
    env: str
    task_key: str
    progress: EpisodeProgress


class RoundHook(Protocol):
    """Hears where an attempt stands: as it begins, then after each model reply."""

    async def __call__(self, progress: EpisodeProgress) -> None: ...


async def _unheard(progress: EpisodeProgress) -> None:
    """The hook of a caller that follows no episode in flight (a Ray node: its head stores only records)."""


@dataclass
class Conversation:
    """One attempt's messages and usage as they grow: what an episode cut short by its time limit keeps."""

    messages: list[Message]
    context_messages: int  # the leading messages the environment wrote: prompt, one-shot turns
    rounds: int = 0  # model replies
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def progress(self) -> EpisodeProgress:
        return EpisodeProgress(self.rounds, self.prompt_tokens, self.completion_tokens, self.started_at)

    async def reply(
        self, manager: ServerManager, max_tokens: int, options: dict[str, Any], tools: Sequence[dict[str, Any]]
    ) -> Message:
        reply = await manager.chat(self.messages, max_tokens=max_tokens, tools=tools, **options)
        self.rounds += 1
        self.prompt_tokens += reply.usage.prompt_tokens
        self.completion_tokens += reply.usage.completion_tokens
        self.latency_s += reply.latency_s
        message = reply.message()
        self.messages = [*self.messages, message]  # begin()'s list stays its own
        return message


@dataclass(frozen=True)
class EpisodeRun:
    outcome: Outcome
    talk: Conversation


async def play(
    runtime: EnvRuntime, manager: ServerManager, task: EvalTask, settings: EvalSettings, on_round: RoundHook = _unheard
) -> EpisodeRun:
    """One attempt at one episode; `on_round` hears where it stands as it begins and after each model reply. Past
    its time limit, counted from the environment's first messages (a slow sandbox start or set-up is not the
    agent's), it ends as `episode_timeout`, scored 0 as the agent's failure, with the transcript it had."""
    limit = settings.episode.time_limit_s
    async with runtime.episode(task) as episode:
        messages = await episode.begin()
        talk = Conversation(messages, len(messages))
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await _converse(episode, manager, talk, settings, on_round)
        except TimeoutError:
            if not deadline.expired():
                raise  # a TimeoutError of the episode's own, not its time limit
            detail = f"the episode ran past its time limit of {limit:g} s"
            return EpisodeRun(Outcome(EpisodeStatus.EPISODE_TIMEOUT, 0.0, talk.rounds, detail=detail), talk)
        return EpisodeRun(await episode.outcome(), talk)


async def _converse(
    episode: Episode, manager: ServerManager, talk: Conversation, settings: EvalSettings, on_round: RoundHook
) -> None:
    """Model reply → step, until the episode says it is over."""
    options = settings.sampling.options()
    await on_round(talk.progress())
    while True:
        reply = await talk.reply(manager, settings.max_tokens, options, episode.tools)
        await on_round(talk.progress())
        answers = await episode.act(reply)
        if answers is None:
            return
        talk.messages.extend(answers)


class EpisodeGate(Protocol):
    """Decides the order of a run's episodes and when the rest no longer matter."""

    def pick(self, todo: list[EvalTask]) -> int:
        """Index in `todo` (the episodes not started yet, never empty) of the one to start now."""
        ...

    def observe(self, result: EpisodeResult) -> None: ...

    def settled(self) -> bool:
        """True once no further episode can change what the caller decides: the run stops."""
        ...


class Orchestrator:
    def __init__(
        self,
        store: Store,
        run_id: str,
        manager: ServerManager,
        model_id: int,
        settings: EvalSettings,
        on_result: Callable[[EpisodeResult], None] = lambda _: None,
        on_round: Callable[[EpisodeRound], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.manager = manager
        self.model_id = model_id
        self.settings = settings
        self.on_result = on_result
        self.on_round = on_round

    def plan(self, tasks: list[EvalTask]) -> list[tuple[EvalTask, int, int]]:
        """(task, its row id, repeat) still to run: what the store already holds is skipped."""
        done = self.store.done_keys(self.run_id)
        todo = []
        for task in tasks:
            task_id = self.store.task_id(task.env, task.suite, task.split, task.key, task.content_hash)
            for repeat in range(self.settings.repeats):
                if EpisodeKey(self.run_id, self.model_id, task_id, repeat) not in done:
                    todo.append((task, task_id, repeat))
        return todo

    async def run(
        self, tasks: list[EvalTask], runtime: EnvRuntime | None = None, gate: EpisodeGate | None = None
    ) -> None:
        """Every episode still to run (or, with a `gate`, until it is settled). An evolution passes its own
        `runtime`, shared by all its candidates."""
        if runtime is None:
            async with EnvRuntime.of(
                tasks, run_id=self.run_id, max_sandboxes=self.settings.max_sandboxes, settings=self.settings.episode
            ) as owned:
                await self._run_all(tasks, owned, gate)
        else:
            await self._run_all(tasks, runtime, gate)

    async def _run_all(self, tasks: list[EvalTask], runtime: EnvRuntime, gate: EpisodeGate | None) -> None:
        todo = self.plan(tasks)
        runtime.expect(task for task, _, _ in todo)  # a gate may stop early: then this is an upper bound
        if gate is not None:
            await self._run_gated(todo, runtime, gate)
            return
        pool = AioPool(size=self.settings.concurrency)
        futures, episodes = [], []
        try:
            # spawn_n, not `await pool.spawn`: asyncio_pool's spawn catches the CancelledError of a caller waiting
            # for a free place and returns it inside the future, so a Ctrl-C there was lost and the run went on to
            # the end. Here the only await is join(), which lets the cancellation through.
            for task, task_id, repeat in todo:
                episodes.append(self._episode(runtime, task, task_id, repeat))
                futures.append(pool.spawn_n(episodes[-1]))
            await pool.join()
        finally:
            # Cancelled (Ctrl-C, SIGTERM): the episodes still running stop now and release their sandboxes before
            # the runtime closes; an episode is committed only once it ended, so none is half-stored.
            await pool.cancel()
            # A cancel in the loop step after spawn_n stops the pool's own tasks before they begin, and with them
            # the chance to close what they were given: closed here, or Python warns of it as never awaited.
            for episode in episodes:
                if inspect.getcoroutinestate(episode) == inspect.CORO_CREATED:
                    episode.close()
        # A task's exception is never swallowed: the run must not read as complete with episodes missing.
        failures = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        for failure in failures[1:]:
            log.error("another episode failed too: %r", failure)
        if failures:
            raise failures[0]  # type: ignore[misc]

    async def _run_gated(self, todo: list[tuple[EvalTask, int, int]], runtime: EnvRuntime, gate: EpisodeGate) -> None:
        """Keep `concurrency` episodes running, each chosen by the gate when a place frees; stop once it settles."""
        running: set[asyncio.Task[EpisodeResult | None]] = set()
        try:
            while not gate.settled() and (todo or running):
                while todo and len(running) < self.settings.concurrency:
                    task, task_id, repeat = todo.pop(gate.pick([t for t, _, _ in todo]))
                    running.add(asyncio.create_task(self._episode(runtime, task, task_id, repeat)))
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for done in finished:
                    result = done.result()
                    if result is not None:
                        gate.observe(result)
        finally:
            for episode in running:
                episode.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _episode(self, runtime: EnvRuntime, task: EvalTask, task_id: int, repeat: int) -> EpisodeResult | None:
        clock = time.monotonic()
        key = EpisodeKey(self.run_id, self.model_id, task_id, repeat)

        async def heard(progress: EpisodeProgress) -> None:
            await self._in_flight(self.store.record_in_flight, key, progress)
            self.on_round(EpisodeRound(key, task.env, task.key, progress))

        result = None
        try:
            record = await play_record(runtime, self.manager, task, key, self.settings, heard)
            result = await self.commit(record, task, time.monotonic() - clock)
            return result
        finally:
            if result is None:  # cancelled, failed, or stored by another process first: no longer in flight
                await self._in_flight(self.store.drop_in_flight, key)

    async def commit(self, record: EpisodeRecord, task: EvalTask, seconds: float) -> EpisodeResult | None:
        """Store one finished episode (wherever it was played) and report it; a second copy is never counted."""
        try:
            await self._store(record)
        except DuplicateEpisodeError:
            log.warning("%s repeat %d was already recorded; not counted twice", task.key, record.repeat)
            return None
        key = EpisodeKey(record.run_id, record.model_id, record.task_id, record.repeat)
        result = EpisodeResult(task, record.repeat, str(record.status), record.score, seconds, key)
        self.on_result(result)
        return result

    async def _in_flight(self, write: Callable[..., None], *args: object) -> None:
        """A write of an episode's row in flight, which only the monitor reads: a store too busy for it (locked past
        its busy timeout) costs a line in the log, never the episode."""
        try:
            await self._write(write, *args)
        except OperationalError as exc:
            log.warning("could not record an episode in flight: %s", exc)

    async def _store(self, record: EpisodeRecord) -> None:
        await self._write(self.store.record_episode, record)

    async def _write(self, write: Callable[..., object], *args: object) -> None:
        """`write(*args)` in a worker thread, the store being synchronous."""
        job = asyncio.ensure_future(asyncio.to_thread(write, *args))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # Cancelling cannot stop the thread that writes the row: wait for it, so that a cancelled run (a settled
            # race, Ctrl-C) returns with nothing still landing in the store behind it.
            with contextlib.suppress(Exception):
                await job
            raise


async def play_record(
    runtime: EnvRuntime, manager: ServerManager, task: EvalTask, key: EpisodeKey, settings: EvalSettings,
    on_round: RoundHook = _unheard,
) -> EpisodeRecord:  # fmt: skip
    """One episode played to its record, environment errors retried, not yet stored. Separate from storing so that
    another process can play it (the Ray backend's nodes). `on_round` hears each attempt's rounds."""
    run_id, model_id, task_id, repeat = key
    started = datetime.now(UTC)
    error = ""
    for attempt in range(1 + settings.retries):
        try:
            done = await play(runtime, manager, task, settings, on_round)
            break
        except ENV_ERRORS as exc:
            error = f"attempt {attempt + 1}: {type(exc).__name__}: {exc}"
            log.warning("%s repeat %d: environment error, %s", task.key, repeat, error)
    else:
        done = None
    if done is None:
        return EpisodeRecord(run_id, model_id, task_id, repeat, EpisodeStatus.ENV_ERROR, None, error=error[-2000:],
                             started_at=started)  # fmt: skip
    outcome, talk = done.outcome, done.talk
    return EpisodeRecord(
        run_id, model_id, task_id, repeat, outcome.status, outcome.score, rounds=outcome.rounds,
        prompt_tokens=talk.prompt_tokens, completion_tokens=talk.completion_tokens, latency_s=talk.latency_s,
        transcript=talk.messages, started_at=started, context_messages=talk.context_messages,
        verdict={"answer": outcome.answer, "expected": outcome.expected, "detail": outcome.detail},
    )  # fmt: skip


def summarize(store: Store, run_id: str, tasks: list[EvalTask], model_id: int) -> list[Aggregate]:
    """Per (env, split): mean score over scored episodes (None when none was: `ScoreTally`), episode and error
    counts, the environment's own metrics (DB: AgentBench's `overall_cat_accuracy`) and the time it took
    (db/run_time.py, every session of the run so far)."""
    times = store.wall_times(run_id)
    by_row = {store.task_id(t.env, t.suite, t.split, t.key, t.content_hash): t for t in tasks}
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for episode in store.episodes(run_id):
        task = by_row.get(episode.task_id)
        if task is not None and episode.model_id == model_id:
            groups[(task.env, task.split)].append((task, episode))
    aggregates = []
    for (env, split), items in sorted(groups.items()):
        scored = [(t.task, e.score) for t, e in items if e.score is not None]
        tally = ScoreTally.of(e.score for _, e in items)
        aggregate = Aggregate(
            run_id=run_id, model_id=model_id, env=env, split=split, episodes=tally.episodes, errors=tally.errors,
            score=tally.mean, metrics=environment(env).metrics(scored) if scored else {},
            wall_s=times.get((model_id, env, split), 0.0),
        )  # fmt: skip
        store.save_aggregate(aggregate)
        aggregates.append(aggregate)
    return aggregates
