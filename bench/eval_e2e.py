"""Whole episodes with the embedded model: the landed serving set-up against today's, side by side in one run.

    python -m bench.eval_e2e [--job main|demo] [--limit N] [--new-concurrency C ...] [--also PRESET ...]
    python -m bench.eval_e2e --vllm [--job main|demo] [--limit N] [--new-concurrency C]

`--vllm`: today's default (transformers serve, default preset) against vLLM's CPU build at the same concurrency,
on the same tasks; the demo job at the demo's default budget (cycleqd/demo/command.py). Besides the ratio it
prints each server's start and the number of episodes from which vLLM's longer start is paid back (what
serving/resolve.py's VLLM_CPU_MIN_EPISODES is set from).

`--job main` is the README's `cycleqd eval --limit 3` (built-in os, db and coding dev tasks, 512 tokens per
reply, 5 rounds), timed from the start of its environments (sandbox pool, MariaDB), as `eval` pays for them;
`--job demo` is one candidate evaluation of `cycleqd evolve` at the demo's settings (128 tokens, 3 rounds), on
the same 9 tasks, timed as evolve plays a candidate: on environments already running, since an evolution starts
them once for all its candidates (their start-up is printed, not counted). Each set-up runs the eval
orchestrator over the same tasks with a real `transformers serve` of the embedded SmolLM2: the landed one (no
batching, bf16, the landed concurrency: 4 for eval, 2 for the demo) and today's (the default serving preset,
--new-concurrency). Prints episodes/s of each, their ratio, and whether every episode got the same score and
transcript. `--also` adds serving presets (bench/serving_cpu.py's names) at each --new-concurrency. Each line
also gives the tokens the episodes prompted and generated, since a preset that changes greedy answers can change
how much there is to generate, and the longest episode's model time: the batch thins out as episodes end, so no
set-up finishes before that episode's replies do.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from cycleqd.db import open_store
from cycleqd.db.schema import Episode, Task
from cycleqd.db.store import Store
from cycleqd.eval.orchestrator import EvalSettings, Orchestrator
from cycleqd.eval.runtime import EnvRuntime
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.serving.client import ClientSettings
from cycleqd.serving.default_model import default_checkpoint
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.transformers_serve import SERVE_PRESETS, ServeOptions, TransformersServeManager

JOBS = {
    "main": {"max_tokens": 512, "rounds": 5, "landed": 4, "runtime_counted": True},
    "demo": {"max_tokens": 128, "rounds": 3, "landed": 2, "runtime_counted": False},
}


def transformers_server(options: ServeOptions, client: ClientSettings) -> ServerManager:
    return TransformersServeManager(options=options, client_settings=client)


def vllm_server(options: ServeOptions, client: ClientSettings) -> ServerManager:
    from cycleqd.serving.vllm_serve import VLLMManager

    return VLLMManager(client_settings=client)


async def play(
    options: ServeOptions,
    concurrency: int,
    job: dict,
    limit: int,
    db: Path,
    server: Callable[[ServeOptions, ClientSettings], ServerManager] = transformers_server,
) -> tuple[float, dict, str, float]:
    tasks = load_eval_tasks(["os", "db", "coding"], "builtin", "dev", limit)
    store = open_store(db)
    run = store.create_run("bench", {})
    checkpoint = default_checkpoint()
    settings = EvalSettings.sized(
        concurrency=concurrency, repeats=1, max_tokens=job["max_tokens"], rounds=job["rounds"]
    )  # as `eval` sizes a run
    client = ClientSettings(max_concurrency=max(concurrency, 4))
    started = time.perf_counter()
    async with server(options, client) as manager:
        await manager.serve(checkpoint)
        start_s = time.perf_counter() - started
        model_id = store.model_id(checkpoint.identity(), str(checkpoint.path))
        orchestrator = Orchestrator(store, run.id, manager, model_id, settings)
        elapsed, up = await timed_run(orchestrator, tasks, settings, run.id, job["runtime_counted"])
    episodes = store.episodes(run.id)
    by_task = {e.task_id: (e.score, e.transcript) for e in episodes}
    prompted, generated = sum(e.prompt_tokens for e in episodes), sum(e.completion_tokens for e in episodes)
    tokens = f"{up}{prompted:,} prompt and {generated:,} generated tokens ({generated / elapsed:.1f} generated/s)"
    # A batch shrinks as episodes end: the job's wall time is at least its longest episode's chain of replies.
    longest = max(episodes, key=lambda e: e.latency_s)
    tokens += (f"; longest episode {longest.latency_s:.0f} s of model time for {longest.completion_tokens:,} "
               f"generated tokens in {longest.rounds} rounds\n    {where_time_went(store, episodes)}")  # fmt: skip
    tokens += f"\n    server: {manager.decoding()}, up in {start_s:.1f} s"
    return len(episodes) / elapsed, by_task, tokens, start_s


async def timed_run(
    orchestrator: Orchestrator, tasks: list, settings: EvalSettings, run_id: str, runtime_counted: bool
) -> tuple[float, str]:
    """Seconds the tasks took, counting the environments' start-up or not; and a note on that start-up."""
    started = time.perf_counter()
    if runtime_counted:
        await orchestrator.run(tasks)  # as `cycleqd eval` runs: it starts the environments it plays on
        return time.perf_counter() - started, ""
    async with EnvRuntime.of(tasks, run_id=run_id, max_sandboxes=settings.max_sandboxes,
                             settings=settings.episode) as runtime:  # fmt: skip
        up = f"environments up in {time.perf_counter() - started:.1f} s (not counted); "
        started = time.perf_counter()
        await orchestrator.run(tasks, runtime)  # as evolve plays a candidate, on its running environments
        return time.perf_counter() - started, up


def where_time_went(store: Store, episodes: list[Episode]) -> str:
    """Per environment: the episodes' summed wall time and the part of it spent waiting for the model."""
    with store.session() as session:
        env_of = {task_id: env for task_id, env in session.execute(select(Task.id, Task.env))}
    wall: dict[str, float] = {}
    model: dict[str, float] = {}
    for episode in episodes:
        env = env_of[episode.task_id]
        wall[env] = wall.get(env, 0.0) + (episode.finished_at - episode.started_at).total_seconds()
        model[env] = model.get(env, 0.0) + episode.latency_s
    return "; ".join(f"{env}: episodes {wall[env]:.0f} s, model {model[env]:.0f} s" for env in sorted(wall))


async def main(job_name: str, limit: int, new_concurrency: list[int], also: list[str]) -> None:
    job = JOBS[job_name]
    setups = [(f"landed: no batching, bf16, concurrency {job['landed']}", SERVE_PRESETS["sequential-bf16"],
               job["landed"])]  # fmt: skip
    for concurrency in new_concurrency:
        setups += [(f"{'today' if name == 'default' else name}: {SERVE_PRESETS[name].describe()}, concurrency "
                    f"{concurrency}", SERVE_PRESETS[name], concurrency) for name in ["default", *also]]  # fmt: skip
    print(f"job {job_name}: {job['max_tokens']} tokens per reply, {job['rounds']} rounds, {limit} tasks per env")
    rates, outcomes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for i, (label, options, concurrency) in enumerate(setups):
            rate, by_task, tokens, _ = await play(options, concurrency, job, limit, Path(folder) / f"{i}.db")
            rates.append(rate)
            outcomes.append(by_task)
            print(f"  {label}: {len(by_task)} episodes, {rate:.3f} episodes/s; {tokens}", flush=True)
    for (label, _, concurrency), rate, by_task in list(zip(setups, rates, outcomes, strict=True))[1:]:
        same = "yes" if by_task == outcomes[0] else "NO"
        name = f"{label.split(':')[0]}, concurrency {concurrency}"
        print(f"  {name} / landed: {rate / rates[0]:.2f}x; same scores and transcripts: {same}")


async def vllm_against_transformers(job_name: str, limit: int, concurrency: int) -> None:
    from cycleqd.demo.command import PRESETS

    job = dict(JOBS[job_name])
    if job_name == "demo":
        job |= {"max_tokens": PRESETS["default"].max_tokens, "rounds": PRESETS["default"].rounds}
    print(f"job {job_name}: {job['max_tokens']} tokens per reply, {job['rounds']} rounds, {limit} tasks per env, "
          f"concurrency {concurrency}")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, server in (("transformers", transformers_server), ("vllm", vllm_server)):
            rate, by_task, tokens, start_s = await play(SERVE_PRESETS["default"], concurrency, job, limit,
                                               Path(folder) / f"{name}.db", server)  # fmt: skip
            results[name] = (rate, by_task, start_s)
            print(f"  {name}: {len(by_task)} episodes, {rate:.3f} episodes/s; {tokens}", flush=True)
    (t_rate, t_tasks, t_start), (v_rate, v_tasks, v_start) = results["transformers"], results["vllm"]
    saved_per_episode = 1 / t_rate - 1 / v_rate
    paid_back = f"{(v_start - t_start) / saved_per_episode:.0f} episodes" if saved_per_episode > 0 else "never"
    print(f"  vllm / transformers: {v_rate / t_rate:.2f}x episodes/s (goal >= 2 for the demo); its longer start "
          f"({v_start - t_start:+.1f} s) is paid back after {paid_back}; same scores and transcripts: "
          f"{'yes' if v_tasks == t_tasks else 'no'}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", choices=sorted(JOBS), default="main")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--new-concurrency", type=int, nargs="+", default=[9], help="one or more: each plays today's "
                        "set-up (and every --also) at that concurrency")  # fmt: skip
    parser.add_argument("--also", nargs="*", default=[], choices=sorted(SERVE_PRESETS))
    parser.add_argument("--vllm", action="store_true", help="vLLM's CPU build against today's default")
    args = parser.parse_args()
    if args.vllm:
        asyncio.run(vllm_against_transformers(args.job, args.limit, args.new_concurrency[0]))
    else:
        asyncio.run(main(args.job, args.limit, args.new_concurrency, args.also))
