"""Whole episodes on vLLM's CPU build with and without `--deterministic`, side by side in one run: how many
transcripts differ from the first run's when the same tasks are played at other concurrencies and played again, and
what the mode costs in episodes/s.

    python -m bench.determinism [--suite builtin] [--limit 8] [--concurrency 1 8 32] [--max-tokens 224] [--rounds 3]

Two servers of the embedded SmolLM2 stay up for the whole run, one in each mode (an idle vLLM server takes under
1% of a core). The tasks are the first `--limit` dev tasks of OS and DB; the defaults are the demo's settings. For
each concurrency, then the first again (a second run), each mode plays every task, off then on, so the two modes'
rates are measured alternately under the same conditions. Every play is compared with that mode's first one,
transcript for transcript and score for score.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.eval_e2e import timed_run
from cycleqd.db import open_store
from cycleqd.eval.orchestrator import EvalSettings, Orchestrator
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.serving.client import ClientSettings
from cycleqd.serving.default_model import default_checkpoint
from cycleqd.serving.vllm_serve import VLLMManager

MODES = {"mode off": False, "deterministic": True}


async def play(manager: VLLMManager, tasks: list, concurrency: int, max_tokens: int, rounds: int,
               db: Path) -> tuple[float, dict]:  # fmt: skip
    """Episodes/s (environments started beforehand, not counted, as evolve plays a candidate) and each task's
    score and transcript."""
    store = open_store(db)
    run = store.create_run("bench", {})
    checkpoint = default_checkpoint()
    settings = EvalSettings.sized(concurrency=concurrency, repeats=1, max_tokens=max_tokens, rounds=rounds)
    model_id = store.model_id(checkpoint.identity(), str(checkpoint.path))
    orchestrator = Orchestrator(store, run.id, manager, model_id, settings)
    elapsed, _ = await timed_run(orchestrator, tasks, settings, run.id, runtime_counted=False)
    episodes = store.episodes(run.id)
    return len(episodes) / elapsed, {e.task_id: (e.score, e.transcript) for e in episodes}


def differing(by_task: dict, reference: dict) -> int:
    return sum(by_task.get(task) != outcome for task, outcome in reference.items())


async def main(suite: str, limit: int, concurrencies: list[int], max_tokens: int, rounds: int) -> None:
    tasks = load_eval_tasks(["os", "db"], suite, "dev", limit)
    print(f"{len(tasks)} tasks ({suite} dev, {limit} per environment of os, db); {max_tokens} tokens per reply, "
          f"{rounds} rounds; concurrencies {concurrencies}, then {concurrencies[0]} again", flush=True)  # fmt: skip
    checkpoint = default_checkpoint()
    managers = {}
    try:
        for label, deterministic in MODES.items():
            manager = VLLMManager(client_settings=ClientSettings(max_concurrency=max(concurrencies)),
                                  deterministic=deterministic)  # fmt: skip
            managers[label] = manager
            await manager.serve(checkpoint)
            print(f"  {label}: {manager.decoding()}", flush=True)
        reference: dict[str, dict] = {}
        rates: dict[str, dict[int, list[float]]] = {label: {} for label in MODES}
        with tempfile.TemporaryDirectory() as folder:
            for step, concurrency in enumerate([*concurrencies, concurrencies[0]]):
                for label, manager in managers.items():
                    db = Path(folder) / f"{step}-{label}.db"
                    rate, by_task = await play(manager, tasks, concurrency, max_tokens, rounds, db)
                    rates[label].setdefault(concurrency, []).append(rate)
                    first = reference.setdefault(label, by_task)
                    run = "first run" if step == 0 else ("second run" if step == len(concurrencies) else "")
                    print(f"  {label}, concurrency {concurrency}{f' ({run})' if run else ''}: {rate:.3f} episodes/s; "
                          f"{differing(by_task, first)} of {len(first)} transcripts differ from the first run",
                          flush=True)  # fmt: skip
    finally:
        for manager in managers.values():
            await manager.stop()
    for concurrency in concurrencies:
        off, on = (statistics.median(rates[label][concurrency]) for label in MODES)
        print(f"  concurrency {concurrency}: mode off ÷ deterministic = {off / on:.2f}x episodes/s (budget 1.3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="builtin", help="a suite with a dev split of os and db tasks")
    parser.add_argument("--limit", type=int, default=8, help="dev tasks per environment")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.suite, args.limit, args.concurrency, args.max_tokens, args.rounds))
