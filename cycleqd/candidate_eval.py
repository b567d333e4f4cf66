"""How an evolution scores a candidate with real episodes: materialise its genome into a checkpoint, swap it into
the slot's model server, run every task's episodes through the eval orchestrator (one sandbox pool and one
MariaDB shared by the whole run), and average the scores per task.

A materialised checkpoint is cache: it is deleted once its server serves something else. A candidate's model row
is keyed by its genome hash, so a resumed run finds the episodes its candidates already played.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from cycleqd.eval_tasks import EvalTask, load_eval_tasks
from cycleqd.evolution import CandidateUnderTest
from cycleqd.orchestrator import EvalSettings, Orchestrator
from db.evolution_store import EvolutionStore
from db.store import Store
from evolver.config import EvolveConfig, TaskSpec
from evolver.materialize import materialize
from evolver.svd_cache import SVDCache
from serving.manager import ServerManager
from serving.model_ref import LocalCheckpoint


def task_episodes(spec: TaskSpec, test: bool) -> list[EvalTask]:
    split = spec.test_split if test else spec.selection_split
    return load_eval_tasks([spec.env], spec.suite, split, spec.limit)


def eval_settings(config: EvolveConfig) -> EvalSettings:
    spec = config.eval
    return EvalSettings.sized(concurrency=spec.concurrency, repeats=spec.repeats, max_tokens=spec.max_tokens,
                              rounds=spec.rounds)  # fmt: skip


class EpisodeEvaluator:
    def __init__(
        self,
        store: Store,
        run_id: str,
        config: EvolveConfig,
        cache: SVDCache,
        checkpoints_dir: Path,
        managers: list[ServerManager],
        runtime: object,
    ) -> None:
        self.store = store
        self.evo = EvolutionStore(store, run_id)
        self.run_id = run_id
        self.config = config
        self.cache = cache
        self.checkpoints_dir = checkpoints_dir
        self.managers = managers
        self.runtime = runtime
        self.slots = len(managers)
        self.settings = eval_settings(config)
        self.tasks = {(spec.name, test): task_episodes(spec, test) for spec in config.tasks for test in (False, True)}
        self._materialised: dict[int, Path] = {}  # per slot: the checkpoint it serves, deleted when it moves on

    def all_tasks(self) -> list[EvalTask]:
        return [task for tasks in self.tasks.values() for task in tasks]

    async def evaluate(self, slot: int, candidate: CandidateUnderTest, test: bool) -> tuple[int | None, dict]:
        path = candidate.checkpoint
        if path is None:
            assert candidate.genome is not None and candidate.genome_hash is not None
            out = self.checkpoints_dir / candidate.genome_hash
            path = await asyncio.to_thread(materialize, candidate.genome, self.cache, out)
        manager = self.managers[slot]
        started = time.monotonic()
        ref = LocalCheckpoint(path)
        await manager.serve(ref)
        swap_s = time.monotonic() - started
        self._forget_previous(slot, path if candidate.checkpoint is None else None)
        self.evo.set_server(slot, candidate.candidate_id, f"{candidate.kind} {candidate.candidate_id}", swap_s)
        identity = f"genome:{candidate.genome_hash}" if candidate.genome_hash else await asyncio.to_thread(ref.identity)
        model_id = self.store.model_id(identity, str(path), candidate.genome_hash)
        tasks = [task for spec in self.config.tasks for task in self.tasks[(spec.name, test)]]
        orchestrator = Orchestrator(self.store, self.run_id, manager, model_id, self.settings)
        await orchestrator.run(tasks, self.runtime)  # type: ignore[arg-type]
        return model_id, {s.name: self._mean_score(model_id, self.tasks[(s.name, test)]) for s in self.config.tasks}

    def _mean_score(self, model_id: int, tasks: list[EvalTask]) -> float:
        ids = [self.store.task_id(t.env, t.suite, t.split, t.key, t.content_hash) for t in tasks]
        scores = [s for s in self.store.episode_scores(self.run_id, model_id, ids) if s is not None]
        return sum(scores) / len(scores) if scores else 0.0

    def _forget_previous(self, slot: int, now_serving: Path | None) -> None:
        previous = self._materialised.pop(slot, None)
        if previous is not None and previous != now_serving:
            shutil.rmtree(previous, ignore_errors=True)
        if now_serving is not None:
            self._materialised[slot] = now_serving
