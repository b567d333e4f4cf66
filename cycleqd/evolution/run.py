"""`cycleqd.evolve`: check the inputs, build the SVD cache, start one model server per slot and the shared
environments, run the CycleQD loop, and measure the final table. Raises user errors and returns an
`EvolveResult`; the live view is `cycleqd.display`'s, fed by `on_event`."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import CandidateKind, RunKind, RunStatus
from cycleqd.db.store import Store, check_store_path, open_store
from cycleqd.errors import UserError
from cycleqd.eval.runtime import EnvRuntime, images_for
from cycleqd.events import OnEvent, RunOpened, Stage, Stopping, ignore
from cycleqd.evolution.evaluator import EpisodeEvaluator
from cycleqd.evolution.loop import Evolution, FinalRow
from cycleqd.evolver.checkpoint_files import verify_experts
from cycleqd.evolver.config import EvolveConfig, RaySpec, check_task_sources
from cycleqd.evolver.genome import Genome
from cycleqd.evolver.materialize import materialize
from cycleqd.evolver.svd_cache import SVDCache, build_svd_cache
from cycleqd.ray.support import ray_backend
from cycleqd.results.intervals import run_final_intervals
from cycleqd.results.lookup import find_run
from cycleqd.results.values import EvolveResult
from cycleqd.run_ending import run_ending
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.serving.default_model import cache_root, default_checkpoint
from cycleqd.serving.identity import weights_identity
from cycleqd.serving.model_ref import LocalCheckpoint
from cycleqd.serving.resolve import manager_for
from cycleqd.stopping import run_blocking


class IdenticalExpertsError(UserError):
    """An expert with the base's weights, or two experts with the same weights: nothing to merge."""


def evolve_cache() -> Path:
    return cache_root() / "evolve"


def run_dir(run_id: str) -> Path:
    return evolve_cache() / "runs" / run_id


def resolve_base(config: EvolveConfig) -> Path:
    return default_checkpoint().path if config.base == "default" else Path(config.base)


def evolve(
    config: EvolveConfig | None, *, db: Path | str, on_event: OnEvent | None = None, resume: str | None = None,
    ray: str | None = None, progress: bool = False,
) -> EvolveResult:  # fmt: skip
    """Run the evolution `config` (`cycleqd.evolver.config.load_config(path)` reads one) and keep everything in the
    store at `db`; or, with `resume` (a run id or unique prefix) and no config, continue that run where it stopped.
    `ray`: this invocation's Ray cluster address (overrides the config's `ray.address`). `on_event` receives
    `RunOpened`, `Stage`, each `EvolutionEvent` of the loop and `Stopping` (see cycleqd.events). `progress`: draw
    the SVD cache's bars on the terminal (minutes for large experts), before the first event of the loop. Called
    where an event loop already runs (a Jupyter cell), the loop gets one of its own in a worker thread, which then
    calls `on_event`; `evolve_async` runs on the caller's loop instead.

    Every input is checked before the run row is created, so a mistake leaves no run behind. Raises a `UserError`
    (or one of `cycleqd.errors.USER_ERRORS`), or `RunInterrupted` on Ctrl-C or SIGTERM; a run stopped either way
    is marked interrupted or failed in the store, never left running."""
    run = _open_run(config, Path(db), on_event or ignore, resume, ray)
    with run.ending():
        cache = run.prepare(progress)
        rows = run_blocking(lambda: run.evolve(cache), lambda: run.notify(Stopping()))
        out = run.final_model(rows, cache)
    return run.result(rows, out)


async def evolve_async(
    config: EvolveConfig | None, *, db: Path | str, on_event: OnEvent | None = None, resume: str | None = None,
    ray: str | None = None, progress: bool = False,
) -> EvolveResult:  # fmt: skip
    """`evolve` on the running event loop, its blocking steps (checkpoints, images, the SVD cache, the final model)
    in worker threads. The loop and its signals are the caller's: cancelling the awaiting task stops the run as
    Ctrl-C does (marked interrupted, resumable) and raises CancelledError."""
    run = await asyncio.to_thread(_open_run, config, Path(db), on_event or ignore, resume, ray)
    with run.ending():
        cache = await asyncio.to_thread(run.prepare, progress)
        rows = await run.evolve(cache)
        out = await asyncio.to_thread(run.final_model, rows, cache)
    return await asyncio.to_thread(run.result, rows, out)


def _open_run(config: EvolveConfig | None, db: Path, notify: OnEvent, resume: str | None,
              ray: str | None) -> _EvolveRun:  # fmt: skip
    """The inputs checked, then the run row made (or found, to resume) and marked running."""
    if (config is None) == (resume is None):
        raise UserError("give a config for a new evolution, or the id of one to resume (--config FILE or --resume RUN)")
    store = open_store(db, create=False) if resume else None
    if resume:
        assert store is not None
        found = find_run(store, resume, db, kind=RunKind.EVOLVE)
        resume = found.id
        config = EvolveConfig.from_snapshot(found.config)
    assert config is not None
    if ray:  # where it runs is this invocation's choice; a GPU setting in the config stays
        config = replace(config, ray=RaySpec(ray, config.ray.gpus if config.ray else False))
    if store is None:
        check_store_path(db)  # a wrong --db fails now, not after the checkpoints were read
    _check_inputs(config, resume)
    store = store or open_store(db)
    # The run exists from here on, so the monitor shows the long stages before the first generation.
    run_id = resume or store.create_run(RunKind.EVOLVE, config.snapshot()).id
    store.set_run_status(run_id, RunStatus.RUNNING)
    done = len(EvolutionStore(store, run_id).committed_generations())
    notify(RunOpened(run_id, resume is not None, done=done, planned=config.generations,
                     elapsed_s=store.run_seconds(run_id)))  # fmt: skip
    return _EvolveRun(store, run_id, config, db, notify)


@dataclass(frozen=True)
class _EvolveRun:
    """One evolution whose run row exists: its stages, and the run's status once they end."""

    store: Store
    run_id: str
    config: EvolveConfig
    db: Path
    notify: OnEvent

    def ending(self) -> contextlib.AbstractContextManager[None]:
        """The run's status when it stops early (cycleqd/run_ending.py)."""
        return run_ending(self)

    def prepare(self, progress: bool) -> SVDCache:
        experts = [Path(t.expert) for t in self.config.tasks]
        return _prepare(self.store, self.run_id, self.config, resolve_base(self.config), experts, self.notify,
                        progress)  # fmt: skip

    async def evolve(self, cache: SVDCache) -> list[FinalRow]:
        return await _evolve(self.store, self.run_id, self.config, cache, self.notify)

    def final_model(self, rows: list[FinalRow], cache: SVDCache) -> Path:
        return _final_model(self.store, self.run_id, rows, cache)

    def result(self, rows: list[FinalRow], final_model: Path) -> EvolveResult:
        self.store.set_run_status(self.run_id, RunStatus.COMPLETED)
        intervals = run_final_intervals(self.store, self.run_id, rows, self.config.tasks)
        return EvolveResult(run_id=self.run_id, db=self.db, final_model=final_model, table=tuple(rows),
                            intervals=intervals, tasks=self.config.tasks)  # fmt: skip


def _check_inputs(config: EvolveConfig, resume: str | None) -> None:
    """Everything a user can get wrong, before the run row exists: task files and splits, the cluster, the
    checkpoints."""
    check_task_sources(config, f"the config of run {resume}" if resume else "the config")
    if config.ray is not None:  # before anything slow: an unreachable cluster is one line
        ray_backend().connect(config.ray.address)
    base = resolve_base(config)
    experts = [Path(t.expert) for t in config.tasks]
    verify_experts(base, experts)
    refuse_identical(base, experts, [t.name for t in config.tasks])


def refuse_identical(base: Path, experts: list[Path], names: list[str]) -> None:
    """An expert with the base's weights has no task vector, and two experts with the same weights make two archives
    of one skill: either way the evolution would spend its budget on nothing, so it is refused before it starts."""
    base_weights = weights_identity(base)
    seen: dict[str, str] = {}
    for name, expert in zip(names, experts, strict=True):
        weights = weights_identity(expert)
        if weights == base_weights:
            raise IdenticalExpertsError(
                f"the expert of task {name} ({expert}) has the same weights as the base ({base}): it learned nothing "
                "to merge; fine-tune it first (cycleqd sft)"
            )
        if weights in seen:
            raise IdenticalExpertsError(f"the experts of tasks {seen[weights]} and {name} have the same weights "
                                        f"({expert}); each task needs its own expert")  # fmt: skip
        seen[weights] = name


def _prepare(store: Store, run_id: str, config: EvolveConfig, base: Path, experts: list[Path],
             notify: OnEvent, progress: bool) -> SVDCache:  # fmt: skip
    """Images, then the SVD cache (minutes for large experts, once per expert), each announced as the run's stage
    in the store (the monitor shows it) and to the caller."""

    def stage(text: str | None) -> None:
        store.set_run_stage(run_id, text)
        notify(Stage(text))

    stage("building sandbox images")
    build_images(docker_client(), images_for([t.env for t in config.tasks]))
    stage(f"building the SVD cache of {len(experts)} expert(s)")
    cache = build_svd_cache(base, experts, evolve_cache(), progress=progress)
    stage(None)
    return cache


def _final_model(store: Store, run_id: str, rows: list[FinalRow], cache: SVDCache) -> Path:
    """The CycleQD final model written out as a checkpoint folder under the run's cache folder."""
    final = next(r for r in rows if r.kind == CandidateKind.FINAL)
    out = run_dir(run_id) / "final-model"
    genome = EvolutionStore(store, run_id).candidate(final.candidate_id)
    assert genome is not None and genome.genome_hash is not None
    materialize(Genome.load(evolve_cache() / "genomes", genome.genome_hash), cache, out)
    return out


async def _evolve(store: Store, run_id: str, config: EvolveConfig, cache: SVDCache, notify: OnEvent) -> list[FinalRow]:
    if config.ray is not None:
        return await _evolve_on_cluster(store, run_id, config, cache, notify)
    base_ref = LocalCheckpoint(cache.base)
    async with AsyncExitStack() as stack:
        managers = []
        for slot in range(config.servers):
            manager = manager_for(base_ref, server=config.server, slot=slot, episodes=config.planned_episodes(),
                                  deterministic=config.eval.deterministic)  # fmt: skip
            await stack.enter_async_context(manager)
            managers.append(manager)
        evaluator = EpisodeEvaluator(store, run_id, config, cache, run_dir(run_id) / "checkpoints", managers, None)
        settings = evaluator.settings
        runtime = EnvRuntime.of(evaluator.all_tasks(), run_id=run_id, max_sandboxes=settings.max_sandboxes,
                                settings=settings.episode)  # fmt: skip
        evaluator.runtime = await stack.enter_async_context(runtime)
        return await _loop(store, run_id, config, cache, evaluator, notify)


async def _loop(store: Store, run_id: str, config: EvolveConfig, cache: SVDCache, evaluator: object,
                notify: OnEvent) -> list[FinalRow]:  # fmt: skip
    evolution = Evolution(config, EvolutionStore(store, run_id), cache, evolve_cache() / "genomes", evaluator,  # type: ignore[arg-type]
                          on_event=notify)  # fmt: skip
    return await evolution.run()


async def _evolve_on_cluster(store: Store, run_id: str, config: EvolveConfig, cache: SVDCache,
                             notify: OnEvent) -> list[FinalRow]:  # fmt: skip
    """The loop here, each slot a Ray actor on some node (cycleqd.ray.backend); the nodes read or build the SVD cache
    at this machine's cache path."""
    assert config.ray is not None
    backend = ray_backend()
    backend.connect(config.ray.address)
    evaluator = backend.RayEpisodeEvaluator(store, run_id, config, cache.base, evolve_cache(),
                                            run_dir(run_id) / "checkpoints", gpus=config.ray.gpus)  # fmt: skip
    try:
        return await _loop(store, run_id, config, cache, evaluator, notify)
    finally:
        await evaluator.close()
