"""`cycleqd evolve`: check the inputs, build the SVD cache, start one model server per slot and the shared
environments, run the CycleQD loop with a live view, and print the final table. `--resume RUN` continues a run
from the store (its config is stored with it)."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import RunStatus
from cycleqd.db.store import Store, open_store
from cycleqd.eval.runtime import EnvRuntime, images_for
from cycleqd.evolve.evaluator import EpisodeEvaluator
from cycleqd.evolve.loop import Evolution, EvolutionEvent, FinalRow
from cycleqd.evolver.checkpoint_files import verify_experts
from cycleqd.evolver.config import EvolveConfig, RaySpec
from cycleqd.evolver.genome import Genome
from cycleqd.evolver.materialize import materialize
from cycleqd.evolver.svd_cache import SVDCache, build_svd_cache
from cycleqd.ray.support import RayClusterError, ray_backend
from cycleqd.results.intervals import final_intervals_json, final_report_tables, run_final_intervals
from cycleqd.sandboxes.engine import docker_client
from cycleqd.sandboxes.images import build_images
from cycleqd.serving.default_model import cache_root, default_checkpoint
from cycleqd.serving.identity import weights_identity
from cycleqd.serving.model_ref import LocalCheckpoint
from cycleqd.serving.resolve import manager_for


def evolve_cache() -> Path:
    return cache_root() / "evolve"


def resolve_base(config: EvolveConfig) -> Path:
    return default_checkpoint().path if config.base == "default" else Path(config.base)


def run_evolve_command(
    config: EvolveConfig | None, db_path: Path, resume_id: str | None, as_json: bool, console: Console, err: Console,
    ray_address: str | None = None,
) -> int:  # fmt: skip
    store = open_store(db_path)
    if resume_id:
        run = store.get_run(resume_id)
        if run is None or run.kind != "evolve":
            err.print(f"[red]error:[/] no evolution run {resume_id!r} in {db_path}")
            return 2
        config = EvolveConfig.from_snapshot(run.config)
    assert config is not None
    if ray_address:  # where it runs is this invocation's choice; a GPU setting in the config stays
        config = replace(config, ray=RaySpec(ray_address, config.ray.gpus if config.ray else False))
    if config.ray is not None:  # before anything slow: an unreachable cluster is one line
        try:
            ray_backend().connect(config.ray.address)
        except RayClusterError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            return 2
    base = resolve_base(config)
    experts = [Path(t.expert) for t in config.tasks]
    verify_experts(base, experts)
    refuse_identical(base, experts, [t.name for t in config.tasks])
    # The run exists from here on, so the monitor shows the long stages before the first generation.
    run = store.get_run(resume_id) if resume_id else store.create_run("evolve", config.snapshot())
    assert run is not None
    store.set_run_status(run.id, RunStatus.RUNNING)
    view = EvolutionView(config, console, enabled=not as_json)
    try:
        cache = _prepare(store, run.id, config, base, experts, console if not as_json else None)
        rows = asyncio.run(_evolve(store, run.id, config, cache, view))
    except RayClusterError as exc:
        store.set_run_status(run.id, "interrupted")
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        store.set_run_status(run.id, RunStatus.INTERRUPTED)
        err.print(f"interrupted; resume with: cycleqd evolve --resume {run.id} --db {db_path}")
        return 130
    final = next(r for r in rows if r.kind == "final")
    evo = EvolutionStore(store, run.id)
    out = run_dir(run.id) / "final-model"
    genome = evo.candidate(final.candidate_id)
    assert genome is not None and genome.genome_hash is not None
    materialize(Genome.load(evolve_cache() / "genomes", genome.genome_hash), cache, out)
    store.set_run_status(run.id, RunStatus.COMPLETED)
    if as_json:
        intervals = final_intervals_json(run_final_intervals(store, run.id, rows, config.tasks), rows)
        payload = {"run": run.id, "final_model": str(out), "table": [final_row_json(r) for r in rows],
                   "ci95": intervals}  # fmt: skip
        print(json.dumps(payload, indent=2))
    else:
        for table in final_report_tables(store, run.id, rows, config.tasks):
            console.print(table)
        console.print(f"final model: {out}\nrun {run.id} (cycleqd report {run.id} --db {db_path})", highlight=False)
    return 0


def refuse_identical(base: Path, experts: list[Path], names: list[str]) -> None:
    """An expert with the base's weights has no task vector, and two experts with the same weights make two archives
    of one skill: either way the evolution would spend its budget on nothing, so it is refused before it starts."""
    base_weights = weights_identity(base)
    seen: dict[str, str] = {}
    for name, expert in zip(names, experts, strict=True):
        weights = weights_identity(expert)
        if weights == base_weights:
            raise ValueError(f"the expert of task {name} ({expert}) has the same weights as the base ({base}): it "
                             "learned nothing to merge; fine-tune it first (cycleqd sft)")  # fmt: skip
        if weights in seen:
            raise ValueError(f"the experts of tasks {seen[weights]} and {name} have the same weights ({expert}); "
                             "each task needs its own expert")  # fmt: skip
        seen[weights] = name


def _prepare(store: Store, run_id: str, config: EvolveConfig, base: Path, experts: list[Path],
             console: Console | None) -> SVDCache:  # fmt: skip
    """Images, then the SVD cache (minutes for large experts, once per expert), each announced as the run's stage
    in the store (the monitor shows it) and on the console."""

    def stage(text: str | None) -> None:
        store.set_run_stage(run_id, text)
        if console is not None and text:
            console.print(f"run {run_id}: {text}…", highlight=False)

    stage("building sandbox images")
    build_images(docker_client(), images_for([t.env for t in config.tasks]))
    stage(f"building the SVD cache of {len(experts)} expert(s)")
    cache = build_svd_cache(base, experts, evolve_cache(), progress=console is not None)
    stage(None)
    return cache


def run_dir(run_id: str) -> Path:
    return evolve_cache() / "runs" / run_id


async def _evolve(store: Store, run_id: str, config: EvolveConfig, cache, view: EvolutionView) -> list[FinalRow]:  # noqa: ANN001
    if config.ray is not None:
        return await _evolve_on_cluster(store, run_id, config, cache, view)
    base_ref = LocalCheckpoint(cache.base)
    async with AsyncExitStack() as stack:
        managers = []
        for slot in range(config.servers):
            manager = manager_for(base_ref, slot=slot)
            await stack.enter_async_context(manager)
            managers.append(manager)
        evaluator = EpisodeEvaluator(store, run_id, config, cache, run_dir(run_id) / "checkpoints", managers, None)
        settings = evaluator.settings
        runtime = EnvRuntime.of(evaluator.all_tasks(), run_id=run_id, max_sandboxes=settings.max_sandboxes,
                                settings=settings.episode)  # fmt: skip
        evaluator.runtime = await stack.enter_async_context(runtime)
        return await _loop(store, run_id, config, cache, evaluator, view)


async def _loop(store: Store, run_id: str, config: EvolveConfig, cache, evaluator, view: EvolutionView) -> list:  # noqa: ANN001
    evolution = Evolution(config, EvolutionStore(store, run_id), cache, evolve_cache() / "genomes", evaluator,
                          on_event=view.update)  # fmt: skip
    view.resume_from(len(EvolutionStore(store, run_id).committed_generations()))
    with view:
        return await evolution.run()


async def _evolve_on_cluster(store: Store, run_id: str, config: EvolveConfig, cache, view: EvolutionView) -> list:  # noqa: ANN001
    """The loop here, each slot a Ray actor on some node (cycleqd.ray.backend); the nodes read or build the SVD cache
    at this machine's cache path."""
    assert config.ray is not None
    backend = ray_backend()
    backend.connect(config.ray.address)
    evaluator = backend.RayEpisodeEvaluator(store, run_id, config, cache.base, evolve_cache(),
                                            run_dir(run_id) / "checkpoints", gpus=config.ray.gpus)  # fmt: skip
    try:
        return await _loop(store, run_id, config, cache, evaluator, view)
    finally:
        await evaluator.close()


class EvolutionView:
    """The live view: a bar over generations, the active task, archive fill and the last child's scores."""

    def __init__(self, config: EvolveConfig, console: Console, enabled: bool) -> None:
        self.config = config
        self.console = console
        self.enabled = enabled
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)  # fmt: skip
        self.bar = self.progress.add_task("generations", total=config.generations)
        self.lines: dict[str, str] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
        self.started = time.monotonic()

    def resume_from(self, committed: int) -> None:
        self.progress.update(self.bar, completed=max(0, committed - 1))  # generation 0 is the experts

    def _render(self) -> Group:
        return Group(self.progress, *self.lines.values())

    def update(self, event: EvolutionEvent) -> None:
        scores = "  ".join(f"{k} {v:.2f}" for k, v in event.scores.items())
        if event.kind == "expert":
            self.lines["experts"] = f"expert {event.candidate_id}: {scores}"
        elif event.kind == "child":
            played = f" ({event.episodes[0]}/{event.episodes[1]} episodes)" if event.episodes else ""
            outcome = "rejected early, no archive could take it" if event.rejected_early else scores
            self.lines["child"] = f"generation {event.generation} (active {event.active_task}): child {outcome}{played}"
        elif event.kind == "generation":
            fill = "  ".join(f"{m['archive']} {m['elites']} elites, best {m['best']:.2f}" for m in event.metrics)
            self.lines["archives"] = f"archives: {fill}"
            taken = [f"{i.archive} {i.status.name.lower()}" for i in event.insertions if i.status]
            rejected = "rejected early" if event.rejected_early else "rejected everywhere"
            self.lines["insert"] = f"last child: {', '.join(taken) or rejected}"
            if event.generation >= 1:
                self.progress.update(self.bar, completed=event.generation)
        elif event.kind == "final":
            self.lines["final"] = f"test split, candidate {event.candidate_id}: {scores}"
        if self.enabled:
            self.live.update(self._render())

    def __enter__(self) -> EvolutionView:
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.live.__exit__(*exc)  # type: ignore[arg-type]


def final_table(rows: list[FinalRow], names: list[str]) -> Table:
    table = Table("model", *names, "average", title="held-out test splits")
    for row in rows:
        table.add_row(row.label, *(f"{row.test_scores.get(n, 0.0):.3f}" for n in names), f"{row.average:.3f}")
    return table


def final_row_json(row: FinalRow) -> dict:
    return {"model": row.label, "kind": row.kind, "candidate": row.candidate_id, "scores": row.test_scores,
            "average": row.average}  # fmt: skip
