"""cycleqd on a Ray cluster: the head process keeps the store, the archives, the loop and its exact resume; each
evaluation slot is a Ray actor on some node, pinned by a custom resource (`cycleqd_slot`, one per GPU or CPU slot
a node offers, given to `ray start --resources`) and, with `gpus`, by one GPU.

Scheduling, transport and failure detection are Ray's: actors are placed by their resource requests, candidates
(genomes) travel through the object store once however often they are dispatched, and a node that dies surfaces
as a `RayActorError` on the calls in flight to its actors. A slot lost that way is taken out of the pool until Ray
has restarted its actor (`max_restarts=-1`: on any node that offers a free slot, when one does); the work it had
is run again on another slot. Nothing is stored by a node: records come back to the head, which commits each one
as it arrives, so the store's unique episode key makes a second copy impossible, and a candidate's scores are
recorded once, by the evolution loop, whichever slot computed them.

Importing this module imports Ray; nothing else in cycleqd does, so without the `ray` extra nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError

from cycleqd.db.store import EpisodeKey, Store
from cycleqd.errors import RayClusterError
from cycleqd.eval.orchestrator import EpisodeResult, EvalSettings, Orchestrator
from cycleqd.eval.tasks import EvalTask
from cycleqd.evolution.evaluator import EpisodeEvaluator
from cycleqd.evolution.loop import CandidateUnderTest
from cycleqd.evolver.config import EvolveConfig
from cycleqd.evolver.racing import Race
from cycleqd.ray.node import ModelSpec, NodeSlot

log = logging.getLogger(__name__)
SLOT_RESOURCE = "cycleqd_slot"
NAMESPACE = "cycleqd"
T = TypeVar("T")


def connect(address: str) -> None:
    """Join the cluster at `address` ('auto': the one this machine belongs to) as its driver."""
    if ray.is_initialized():
        return
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise RayClusterError(
            f"no Ray cluster at {address!r} ({exc}); start one with `ray start --head` on the head and "
            f"`ray start --address HEAD:PORT --resources '{{\"{SLOT_RESOURCE}\": N}}'` on each node"
        ) from None


def _check_reachable(address: str) -> None:
    """Fail in seconds where `ray.init` would retry a wrong address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise RayClusterError(
            f"no Ray head answers at {address!r} ({exc}); start one with `ray start --head "
            "--port PORT` and pass HOST:PORT, or 'auto' on a machine that joined a cluster"
        ) from None


def cluster_slots() -> int:
    return int(ray.cluster_resources().get(SLOT_RESOURCE, 0))


class SlotPool:
    """`size` actors of `node_class`, one per slot; calls go to a healthy slot, preferring a given one."""

    def __init__(self, node_class: type, args: tuple, size: int, gpus: bool = False,
                 rejoin: Callable[[Any], Awaitable[None]] | None = None) -> None:  # fmt: skip
        remote = ray.remote(node_class).options(
            resources={SLOT_RESOURCE: 1}, num_cpus=0, num_gpus=1 if gpus else 0, max_restarts=-1, max_task_retries=0
        )
        self.actors = [remote.remote(*args) for _ in range(size)]
        self.size = size
        self.healthy = set(range(size))
        self.load = [0] * size
        self.exclusive: set[int] = set()
        self.changed = asyncio.Condition()
        self.redispatched = 0  # calls run again elsewhere because their slot died under them
        self.rejoin = rejoin  # what a restarted actor must do before it takes work again (e.g. serve the model)
        self._watchers: set[asyncio.Task] = set()

    def _free(self, exclusive: bool) -> list[int]:
        return [i for i in self.healthy if i not in self.exclusive and not (exclusive and self.load[i])]

    @asynccontextmanager
    async def lease(self, preferred: int, exclusive: bool) -> AsyncIterator[int]:
        """A healthy slot: `preferred` when it can take the call, else the least loaded. An exclusive lease (one
        candidate per server) waits until a slot has nothing else running."""
        async with self.changed:
            if not self.healthy:
                log.warning("no slot of the Ray cluster is alive; waiting for a node with a free %s", SLOT_RESOURCE)
            await self.changed.wait_for(lambda: self._free(exclusive))
            free = self._free(exclusive)
            index = preferred if preferred in free else min(free, key=lambda i: (self.load[i], i))
            self.load[index] += 1
            if exclusive:
                self.exclusive.add(index)
        try:
            yield index
        finally:
            async with self.changed:
                self.load[index] -= 1
                self.exclusive.discard(index)
                self.changed.notify_all()

    async def run(self, preferred: int, call: Callable[[Any], Awaitable[T]], exclusive: bool = False) -> T:
        """`call(actor)` on a healthy slot; when that slot dies under it, again on another one."""
        while True:
            async with self.lease(preferred, exclusive) as index:
                try:
                    return await call(self.actors[index])
                except RayActorError as exc:
                    self.lost(index, exc)

    def lost(self, index: int, exc: BaseException) -> None:
        """Slot `index` died (its node or its process): out of the pool until Ray has restarted its actor."""
        self.redispatched += 1
        if index not in self.healthy:
            return
        self.healthy.discard(index)
        log.warning("slot %d of the Ray cluster died (%s); its work goes to another slot", index, type(exc).__name__)
        watcher = asyncio.get_running_loop().create_task(self._back_when_restarted(index))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _back_when_restarted(self, index: int) -> None:
        while True:
            try:
                await self.actors[index].__ray_ready__.remote()  # waits while Ray restarts the actor
                break
            except RayActorError:
                await asyncio.sleep(2)
        if self.rejoin is not None:
            try:
                await self.rejoin(self.actors[index])
            except Exception as exc:  # noqa: BLE001 - the slot stays out; the run goes on with the others
                log.warning("slot %d of the Ray cluster restarted but cannot rejoin: %s", index, exc)
                return
        async with self.changed:
            self.healthy.add(index)
            self.changed.notify_all()
        log.warning("slot %d of the Ray cluster is back", index)

    async def close(self, method: str | None = None) -> None:
        """End every actor (after `method`, e.g. one that stops its servers and sandboxes, where alive)."""
        for watcher in self._watchers:
            watcher.cancel()
        if method:
            alive = [getattr(self.actors[i], method).remote() for i in sorted(self.healthy)]
            await asyncio.gather(*alive, return_exceptions=True)
        for actor in self.actors:
            ray.kill(actor)


class RayCandidateEvaluator:
    """A `CandidateEvaluator` whose slots are actors of a node-side evaluator class (any class with the
    evaluator's `evaluate(slot, candidate, test)`, built on its node from `args`)."""

    races = False  # a race's state lives in this process; the actors play whole candidates

    def __init__(self, node_evaluator: type, args: tuple, slots: int, gpus: bool = False) -> None:
        self.pool = SlotPool(node_evaluator, args, slots, gpus)
        self.slots = slots

    async def evaluate(
        self, slot: int, candidate: CandidateUnderTest, test: bool, race: Race | None = None
    ) -> tuple[int | None, dict]:
        assert race is None, "RayCandidateEvaluator does not race"
        genome = ray.put(candidate)  # into the object store once, however often it is dispatched
        return await self.pool.run(slot, lambda actor: actor.evaluate.remote(0, genome, test), exclusive=True)

    async def close(self) -> None:
        await self.pool.close()


async def play_on_slots(pool: SlotPool, head: Orchestrator, tasks: list[EvalTask], pinned: int | None = None) -> None:
    """Every episode `head` plans, played on the pool's slots (`head.settings.concurrency` at once per slot) and
    committed by `head` as it arrives. An episode whose slot died is played again on another one; with `pinned`,
    every episode goes to that slot and its death ends the call (the caller re-dispatches the candidate)."""
    todo = deque(head.plan(tasks))

    async def lane(preferred: int) -> None:
        while todo:
            task, task_id, repeat = todo.popleft()
            key = EpisodeKey(head.run_id, head.model_id, task_id, repeat)
            clock = time.monotonic()

            def call(actor: Any, task: EvalTask = task, key: tuple = key) -> Awaitable:
                return actor.play.remote(task, key)

            record = await (call(pool.actors[pinned]) if pinned is not None else pool.run(preferred, call))
            await head.commit(record, task, time.monotonic() - clock)

    slots = [pinned] if pinned is not None else list(range(pool.size))
    lanes = [asyncio.ensure_future(lane(slot)) for slot in slots for _ in range(head.settings.concurrency)]
    try:
        await asyncio.gather(*lanes)
    except BaseException:
        # No lane may outlive the call: one left running would send this candidate's episodes to a slot that has
        # moved on to another model.
        for running in lanes:
            running.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        raise


def head_orchestrator(
    store: Store, run_id: str, model_id: int, settings: EvalSettings,
    on_result: Callable[[EpisodeResult], None] = lambda _: None,
) -> Orchestrator:  # fmt: skip
    """The head's orchestrator plans and commits; it has no server, since episodes are played on the nodes."""
    return Orchestrator(store, run_id, None, model_id, settings, on_result)  # type: ignore[arg-type]


async def eval_on_cluster(
    store: Store, run_id: str, config: dict[str, Any], tasks: list[EvalTask], settings: EvalSettings,
    on_plan: Callable[[int], None], on_result: Callable[[EpisodeResult], None],
) -> int:  # fmt: skip
    """`cycleqd eval --ray`: one slot actor per `cycleqd_slot` of the cluster, each serving the model on its node
    (an endpoint is shared), episodes spread over them; returns the model's row id."""
    connect(config["ray"])
    slots = cluster_slots()
    if slots < 1:
        raise RayClusterError(f"the Ray cluster offers no {SLOT_RESOURCE!r}; start its nodes with "
                              f"`ray start ... --resources '{{\"{SLOT_RESOURCE}\": N}}'`")  # fmt: skip
    # a run stored before --dtype or --deterministic existed has neither: it resumes as it ran
    model = ModelSpec(ref=config["model"], api_key_env=config["api_key_env"], server=config["server"],
                      dtype=config.get("dtype", "auto"), deterministic=config.get("deterministic", False))  # fmt: skip
    pool = SlotPool(NodeSlot, (model, tasks, run_id, settings), slots, gpus=bool(config.get("ray_gpus")))
    try:
        served = await asyncio.gather(*(actor.serve_model.remote() for actor in pool.actors))
        if len(set(served)) != 1:
            raise RayClusterError(f"the nodes serve different models for {config['model']!r}: {sorted(set(served))}"
                                  "; give every node the same checkpoint")  # fmt: skip
        identity, label = served[0]

        async def rejoin(actor: Any) -> None:  # a restarted slot serves the same model before it plays again
            if (again := tuple(await actor.serve_model.remote())) != served[0]:
                raise RayClusterError(f"a restarted slot serves {again[0]}, not {identity}")

        pool.rejoin = rejoin
        head = head_orchestrator(store, run_id, store.model_id(identity, label), settings, on_result)
        on_plan(len(head.plan(tasks)))
        await play_on_slots(pool, head, tasks)
        return head.model_id
    finally:
        await pool.close("close")


class RayEpisodeEvaluator(EpisodeEvaluator):
    """The evolution's candidate evaluator on a cluster: a candidate is served by one slot (its genome sent
    through the object store and materialised on that node), its episodes are played there and stored here. When
    the slot dies mid-candidate the candidate goes to another slot, which plays only what was not stored. It does
    not race (a child plays every selection episode): it inherited `races` from the single-machine evaluator while
    its `evaluate` took no race, so every child of `evolve --ray` raised a TypeError."""

    races = False

    def __init__(self, store: Store, run_id: str, config: EvolveConfig, base: Path, cache_root: Path,
                 checkpoints: Path, gpus: bool = False) -> None:  # fmt: skip
        super().__init__(store, run_id, config, None, checkpoints, [], None)  # type: ignore[arg-type]
        model = ModelSpec(base=str(base), experts=tuple(t.expert for t in config.tasks), cache_root=str(cache_root),
                          checkpoints=str(checkpoints), server=config.server,
                          deterministic=config.eval.deterministic)  # fmt: skip
        self.slots = config.servers
        self.pool = SlotPool(NodeSlot, (model, self.all_tasks(), run_id, self.settings), self.slots, gpus)

    async def evaluate(
        self, slot: int, candidate: CandidateUnderTest, test: bool, race: Race | None = None
    ) -> tuple[int | None, dict]:
        assert race is None, "RayEpisodeEvaluator does not race"
        genome = ray.put(candidate)
        tasks = [task for spec in self.config.tasks for task in self.tasks[(spec.name, test)]]
        while True:
            async with self.pool.lease(slot, exclusive=True) as index:
                actor = self.pool.actors[index]
                try:
                    started = time.monotonic()
                    identity, label = await actor.serve_candidate.remote(genome)
                    self.evo.set_server(slot, candidate.candidate_id, f"{candidate.kind} {candidate.candidate_id}",
                                        time.monotonic() - started)  # fmt: skip
                    model_id = self.store.model_id(identity, label, candidate.genome_hash)
                    await play_on_slots(self.pool, head_orchestrator(self.store, self.run_id, model_id,
                                                                     self.settings), tasks, pinned=index)  # fmt: skip
                    break
                except RayActorError as exc:
                    self.pool.lost(index, exc)
        return model_id, {s.name: self._mean_score(model_id, self.tasks[(s.name, test)]) for s in self.config.tasks}

    async def close(self) -> None:
        await self.pool.close("close")
