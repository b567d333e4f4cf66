"""`cycleqd eval`, `cycleqd runs` and `cycleqd show`: what the user sees around the orchestrator."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cycleqd.env_runtime import images_for
from cycleqd.eval_tasks import load_eval_tasks, select_tasks
from cycleqd.orchestrator import EpisodeResult, EvalSettings, Orchestrator, Sampling, summarize
from db.store import Store, open_store
from envs.os_interaction import OSSettings
from sandboxes.engine import docker_client
from sandboxes.images import build_images
from serving.errors import ModelRefError
from serving.model_ref import parse_model_ref, server_prefix
from serving.resolve import manager_for, resolve_model, server_choice


def _settings(config: dict[str, Any]) -> EvalSettings:
    return EvalSettings(
        concurrency=config["concurrency"], repeats=config["repeats"], max_tokens=config["max_tokens"],
        max_sandboxes=max(2, config["concurrency"] * 2), os=OSSettings(round_limit=config["rounds"]),
        sampling=Sampling(**config.get("sampling", {})),
    )  # fmt: skip


def _check_model(config: dict[str, Any]) -> None:
    """Parse the reference before anything is created or started: a typo costs one line, no run, no network."""
    if server_prefix(config["model"])[1] != "default":
        parse_model_ref(config["model"], key_env=config["api_key_env"],
                        allow_download=config.get("allow_download", False))  # fmt: skip
    server_choice(config["model"], config["server"])


def run_eval_command(
    config: dict[str, Any], db_path: Path, resume_id: str | None, as_json: bool, console: Console, err: Console
) -> int:
    if not resume_id:
        try:
            _check_model(config)
        except ModelRefError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            return 2
    store = open_store(db_path)
    if resume_id:
        run = store.get_run(resume_id)
        if run is None:
            err.print(f"[red]error:[/] no run {resume_id!r} in {db_path}")
            return 2
        config = run.config
        if run.status == "completed":  # every planned episode is stored: resuming changes nothing
            _print_results(run.id, store.aggregates(run.id), as_json, console, db_path)
            return 0
    tasks = load_eval_tasks(config["tasks"], config["suite"], config["split"], config["limit"])
    try:
        tasks = select_tasks(tasks, config.get("task_ids"))
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    build_images(docker_client(), images_for(config["tasks"]))
    config = {**config, "planned_episodes": len(tasks) * config["repeats"]}  # the monitor's progress total
    run = store.get_run(resume_id) if resume_id else store.create_run("eval", config)
    assert run is not None
    store.set_run_status(run.id, "running")
    started = time.monotonic()
    try:
        aggregates = asyncio.run(_evaluate(store, run.id, config, tasks, console if not as_json else None))
    except KeyboardInterrupt:
        store.set_run_status(run.id, "interrupted")
        err.print(f"interrupted; resume with: cycleqd eval --resume {run.id} --db {db_path}")
        return 130
    except BaseException:
        store.set_run_status(run.id, "failed")
        err.print(f"the run failed; after a fix, resume with: cycleqd eval --resume {run.id} --db {db_path}")
        raise
    missing = _missing_episodes(store, run.id, config, tasks)
    if missing:
        store.set_run_status(run.id, "failed")
        err.print(f"[red]error:[/] {missing} planned episodes are not stored; resume with: "
                  f"cycleqd eval --resume {run.id} --db {db_path}")  # fmt: skip
        return 1
    store.set_run_status(run.id, "completed")
    _print_results(run.id, aggregates, as_json, console, db_path, time.monotonic() - started)
    return 0


def _print_results(
    run_id: str, aggregates: list, as_json: bool, console: Console, db_path: Path, wall_s: float | None = None
) -> None:
    if as_json:
        print(json.dumps({"run": run_id, "results": [_aggregate_json(a) for a in aggregates]}, indent=2))
    else:
        console.print(_results_table(aggregates, wall_s))
        console.print(f"run {run_id} (cycleqd show {run_id} --db {db_path})", highlight=False)


def _missing_episodes(store: Store, run_id: str, config: dict[str, Any], tasks: list) -> int:
    """Planned (task, repeat) pairs with no stored episode, for any model of this run."""
    done = {(task_id, repeat) for _model, task_id, repeat in store.done_keys(run_id)}
    planned = {(store.task_id(t.env, t.suite, t.split, t.key, t.content_hash), r) for t in tasks
               for r in range(config["repeats"])}  # fmt: skip
    return len(planned - done)


async def _evaluate(store: Store, run_id: str, config: dict[str, Any], tasks: list, console: Console | None) -> list:
    ref = await asyncio.to_thread(
        resolve_model,
        config["model"],
        key_env=config["api_key_env"],
        allow_download=config.get("allow_download", False),
    )
    identity = await asyncio.to_thread(ref.identity)
    model_id = store.model_id(identity, ref.label)
    totals: dict[str, list[float]] = defaultdict(list)
    started = time.monotonic()
    async with manager_for(ref, server=server_choice(config["model"], config["server"])) as manager:
        await manager.serve(ref)
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), console=console, disable=console is None,
        )  # fmt: skip
        orchestrator = Orchestrator(store, run_id, manager, model_id, _settings(config))
        todo = orchestrator.plan(tasks)
        bar = progress.add_task("episodes", total=len(todo), rate="")

        def on_result(result: EpisodeResult) -> None:
            if result.score is not None:
                totals[result.task.env].append(result.score)
            done = progress.tasks[0].completed + 1
            scores = "  ".join(f"{env} {sum(v) / len(v):.2f}" for env, v in sorted(totals.items()))
            rate = f"{done / max(time.monotonic() - started, 1e-9):.2f} ep/s  {scores}"
            progress.update(bar, advance=1, rate=rate)

        orchestrator.on_result = on_result
        with progress:
            await orchestrator.run(tasks)
    return summarize(store, run_id, tasks, model_id, time.monotonic() - started)


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
