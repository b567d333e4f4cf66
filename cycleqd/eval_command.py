"""`cycleqd eval`, `cycleqd runs` and `cycleqd show`: what the user sees around the orchestrator."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cycleqd.env_runtime import images_for
from cycleqd.eval_tasks import load_eval_tasks
from cycleqd.orchestrator import EpisodeResult, EvalSettings, Orchestrator, summarize
from cycleqd.ray_support import RayClusterError, ray_backend
from db.store import Store, open_store
from envs.os_interaction import OSSettings
from sandboxes.engine import docker_client
from sandboxes.images import build_images
from serving.resolve import manager_for, resolve_model


def _settings(config: dict[str, Any]) -> EvalSettings:
    return EvalSettings(
        concurrency=config["concurrency"], repeats=config["repeats"], max_tokens=config["max_tokens"],
        max_sandboxes=max(2, config["concurrency"] * 2), os=OSSettings(round_limit=config["rounds"]),
    )  # fmt: skip


def run_eval_command(
    config: dict[str, Any], db_path: Path, resume_id: str | None, as_json: bool, console: Console, err: Console
) -> int:
    store = open_store(db_path)
    if resume_id:
        run = store.get_run(resume_id)
        if run is None:
            err.print(f"[red]error:[/] no run {resume_id!r} in {db_path}")
            return 2
        config = {**run.config, "ray": config.get("ray")}  # where it runs is this invocation's choice
    tasks = load_eval_tasks(config["tasks"], config["suite"], config["split"], config["limit"])
    if config.get("ray"):  # before any run row: an unreachable cluster is one line
        try:
            ray_backend().connect(config["ray"])
        except RayClusterError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            return 2
    build_images(docker_client(), images_for(config["tasks"]))
    config = {**config, "planned_episodes": len(tasks) * config["repeats"]}  # the monitor's progress total
    run = store.get_run(resume_id) if resume_id else store.create_run("eval", config)
    assert run is not None
    store.set_run_status(run.id, "running")
    started = time.monotonic()
    try:
        aggregates = asyncio.run(_evaluate(store, run.id, config, tasks, console if not as_json else None))
    except RayClusterError as exc:
        store.set_run_status(run.id, "failed")
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        store.set_run_status(run.id, "interrupted")
        err.print(f"interrupted; resume with: cycleqd eval --resume {run.id} --db {db_path}")
        return 130
    store.set_run_status(run.id, "completed")
    if as_json:
        print(json.dumps({"run": run.id, "results": [_aggregate_json(a) for a in aggregates]}, indent=2))
    else:
        console.print(_results_table(aggregates, time.monotonic() - started))
        console.print(f"run {run.id} (cycleqd show {run.id} --db {db_path})", highlight=False)
    return 0


async def _evaluate(store: Store, run_id: str, config: dict[str, Any], tasks: list, console: Console | None) -> list:
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

    def on_plan(episodes: int) -> None:
        progress.update(bar, total=episodes)

    with progress:
        run_here = ray_backend().eval_on_cluster if config.get("ray") else _evaluate_here
        model_id = await run_here(store, run_id, config, tasks, _settings(config), on_plan, on_result)
    return summarize(store, run_id, tasks, model_id, time.monotonic() - started)


async def _evaluate_here(
    store: Store, run_id: str, config: dict[str, Any], tasks: list, settings: EvalSettings,
    on_plan: Callable[[int], None], on_result: Callable[[EpisodeResult], None],
) -> int:  # fmt: skip
    ref = await asyncio.to_thread(resolve_model, config["model"], key_env=config["api_key_env"])
    identity = await asyncio.to_thread(ref.identity)
    model_id = store.model_id(identity, ref.label)
    async with manager_for(ref, server=config["server"]) as manager:
        await manager.serve(ref)
        orchestrator = Orchestrator(store, run_id, manager, model_id, settings, on_result)
        on_plan(len(orchestrator.plan(tasks)))
        await orchestrator.run(tasks)
    return model_id


def _aggregate_json(aggregate: Any) -> dict[str, Any]:
    return {
        "env": aggregate.env, "split": aggregate.split, "score": aggregate.score, "episodes": aggregate.episodes,
        "errors": aggregate.errors, "wall_s": round(aggregate.wall_s, 1), "metrics": aggregate.metrics,
    }  # fmt: skip


def _results_table(aggregates: list, wall_s: float | None = None) -> Table:
    table = Table("env", "split", "score", "n", "errors", "wall time")
    for a in aggregates:
        table.add_row(a.env, a.split, f"{a.score:.3f}", str(a.episodes), str(a.errors), f"{wall_s or a.wall_s:.0f} s")
    return table


def print_runs(db_path: Path, console: Console) -> None:
    store = open_store(db_path)
    table = Table("run", "kind", "status", "created", "model", "tasks")
    for run in store.list_runs():
        table.add_row(run.id, run.kind, run.status, run.created_at.strftime("%Y-%m-%d %H:%M"),
                      str(run.config.get("model", run.config.get("base"))), _task_names(run.config))  # fmt: skip
    console.print(table)


def _task_names(config: dict[str, Any]) -> str:
    # eval runs list environments; evolution runs list task specs
    return ",".join(t["name"] if isinstance(t, dict) else str(t) for t in config.get("tasks", []))


def show_run(db_path: Path, run_id: str, as_json: bool, console: Console, err: Console) -> int:
    store = open_store(db_path)
    run = store.get_run(run_id)
    if run is None:
        err.print(f"[red]error:[/] no run {run_id!r} in {db_path}")
        return 2
    aggregates = store.aggregates(run_id)
    episodes = store.episodes(run_id)
    if as_json:
        payload = {"run": run.id, "kind": run.kind, "status": run.status, "config": run.config,
                   "episodes": len(episodes), "results": [_aggregate_json(a) for a in aggregates]}  # fmt: skip
        print(json.dumps(payload, indent=2))
        return 0
    console.print(f"run {run.id}: {run.kind}, {run.status}, {len(episodes)} episodes", highlight=False)
    console.print(json.dumps(run.config), highlight=False, soft_wrap=True)
    console.print(_results_table(aggregates))
    return 0
