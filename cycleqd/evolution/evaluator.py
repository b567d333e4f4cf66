"""How an evolution scores a candidate with real episodes: materialise its genome into a checkpoint, swap it into
the slot's model server, run every task's episodes through the eval orchestrator (one sandbox pool and one
MariaDB shared by the whole run), and average the scores per task.

A materialised checkpoint is cache: it is deleted once its server serves something else. A candidate's model row
is keyed by its genome hash, so a resumed run finds the episodes its candidates already played.

In a deterministic run, a model's test episodes are adopted from an earlier evolution of the store that measured
the same way (`donor_runs`), and a model found there in full is neither materialised nor served: the final table's
fixed rows (base, experts, naive merge, baselines) are measured once over a demo's seeds.

A raced child (evolver/racing.py) starts with the episodes a killed process already stored, plays the rest in the
order its race chooses, and stops as soon as no archive can take it (the orchestrator cancels what still runs).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from pathlib import Path

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import RunKind
from cycleqd.db.store import Store
from cycleqd.envs.episode import AgentProtocol
from cycleqd.errors import UserError
from cycleqd.eval.orchestrator import EpisodeResult, EvalSettings, Orchestrator
from cycleqd.eval.tasks import EvalTask, load_eval_tasks
from cycleqd.evolution.loop import CandidateUnderTest
from cycleqd.evolver.config import EvolveConfig, TaskSpec
from cycleqd.evolver.materialize import materialize
from cycleqd.evolver.racing import Race
from cycleqd.evolver.svd_cache import SVDCache
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import LocalCheckpoint


def task_episodes(spec: TaskSpec, test: bool) -> list[EvalTask]:
    split = spec.test_split if test else spec.selection_split
    return load_eval_tasks([spec.env], spec.suite, split, spec.limit)


def eval_settings(config: EvolveConfig) -> EvalSettings:
    spec = config.eval
    return EvalSettings.sized(concurrency=spec.concurrency, repeats=spec.repeats, max_tokens=spec.max_tokens,
                              rounds=spec.rounds,
                              env_protocols={t.env: AgentProtocol(t.protocol) for t in config.tasks})  # fmt: skip


def donor_runs(store: Store, run_id: str, config: EvolveConfig) -> list[str]:
    """The other evolutions of the store, newest first, that played test episodes as `config` does: deterministic,
    with the same measurement (`EvolveConfig.test_measurement`). None unless `config` is deterministic."""
    if not config.eval.deterministic:
        return []
    mine = config.test_measurement()
    donors = []
    for run in store.list_runs(limit=10_000):
        if run.id == run_id or run.kind is not RunKind.EVOLVE:
            continue
        try:
            other = EvolveConfig.from_snapshot(run.config)
        except UserError:  # a config this version cannot read measured in some other way
            continue
        if other.eval.deterministic and other.test_measurement() == mine:
            donors.append(run.id)
    return donors


class RaceGate:
    """A child's race as the orchestrator's gate: the race picks the task, the gate that task's next episode."""

    def __init__(self, race: Race, task_index: dict[int, int]) -> None:
        self.race = race
        self.task_index = task_index  # id() of each EvalTask → its task's index in the config

    def pick(self, todo: list[EvalTask]) -> int:
        chosen = self.race.start_next({self.task_index[id(t)] for t in todo})
        return next(i for i, t in enumerate(todo) if self.task_index[id(t)] == chosen)

    def observe(self, result: EpisodeResult) -> None:
        self.race.observe(self.task_index[id(result.task)], result.score)

    def settled(self) -> bool:
        return self.race.rejected


class EpisodeEvaluator:
    races = True

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
        self.donors = donor_runs(store, run_id, config)
        self._materialised: dict[int, Path] = {}  # per slot: the checkpoint it serves, deleted when it moves on

    def all_tasks(self) -> list[EvalTask]:
        return [task for tasks in self.tasks.values() for task in tasks]

    async def evaluate(
        self, slot: int, candidate: CandidateUnderTest, test: bool, race: Race | None = None
    ) -> tuple[int | None, dict]:
        gate = None
        if race is not None:
            assert candidate.genome_hash is not None, "only genomes are raced"
            gate = self._start_race(race, candidate.genome_hash, test)
            if gate.settled():  # what an earlier process played already rules the child out
                return self._genome_model_id(candidate.genome_hash, self.checkpoints_dir / candidate.genome_hash), {}
        if test and self.donors:
            model_id = await self._model_id_unserved(candidate)
            if self._adopted_in_full(model_id):
                return model_id, self._test_scores(model_id)
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
        if candidate.genome_hash:
            model_id = self._genome_model_id(candidate.genome_hash, path)
        else:
            model_id = self.store.model_id(await asyncio.to_thread(ref.identity), str(path))
        tasks = [task for spec in self.config.tasks for task in self.tasks[(spec.name, test)]]
        orchestrator = Orchestrator(self.store, self.run_id, manager, model_id, self.settings)
        await orchestrator.run(tasks, self.runtime, gate)  # type: ignore[arg-type]
        return model_id, {s.name: self._mean_score(model_id, self.tasks[(s.name, test)]) for s in self.config.tasks}

    async def _model_id_unserved(self, candidate: CandidateUnderTest) -> int:
        """The model row `evaluate` would give the candidate, found without materialising or serving it."""
        if candidate.genome_hash:
            path = candidate.checkpoint or self.checkpoints_dir / candidate.genome_hash
            return self._genome_model_id(candidate.genome_hash, path)
        assert candidate.checkpoint is not None
        ref = LocalCheckpoint(candidate.checkpoint)
        return self.store.model_id(await asyncio.to_thread(ref.identity), str(candidate.checkpoint))

    def _adopted_in_full(self, model_id: int) -> bool:
        """Adopt the donors' test episodes of the model; whether this run now holds every one it would play."""
        tasks = [task for spec in self.config.tasks for task in self.tasks[(spec.name, True)]]
        ids = [self.store.task_id(t.env, t.suite, t.split, t.key, t.content_hash) for t in tasks]
        self.store.adopt_episodes(self.run_id, model_id, ids, self.donors)
        return len(self.store.episode_scores(self.run_id, model_id, ids)) >= len(ids) * self.settings.repeats

    def _test_scores(self, model_id: int) -> dict[str, float]:
        return {s.name: self._mean_score(model_id, self.tasks[(s.name, True)]) for s in self.config.tasks}

    def _genome_model_id(self, genome_hash: str, path: Path) -> int:
        return self.store.model_id(f"genome:{genome_hash}", str(path), genome_hash)

    def _start_race(self, race: Race, genome_hash: str, test: bool) -> RaceGate:
        """Plan the race and replay into it the episodes of this genome already in the store (a resume)."""
        specs = self.config.tasks
        race.plan([len(self.tasks[(spec.name, test)]) * self.settings.repeats for spec in specs])
        model_id = self._genome_model_id(genome_hash, self.checkpoints_dir / genome_hash)
        for k, spec in enumerate(specs):
            for score in self._stored_scores(model_id, self.tasks[(spec.name, test)]):
                race.observe(k, score)
        index = {id(task): k for k, spec in enumerate(specs) for task in self.tasks[(spec.name, test)]}
        return RaceGate(race, index)

    def _stored_scores(self, model_id: int, tasks: list[EvalTask]) -> list[float | None]:
        ids = [self.store.task_id(t.env, t.suite, t.split, t.key, t.content_hash) for t in tasks]
        return self.store.episode_scores(self.run_id, model_id, ids)

    def _mean_score(self, model_id: int, tasks: list[EvalTask]) -> float:
        # fsum: the exact sum, whatever order the episodes were played (and stored) in
        scores = [s for s in self._stored_scores(model_id, tasks) if s is not None]
        return math.fsum(scores) / len(scores) if scores else 0.0

    def _forget_previous(self, slot: int, now_serving: Path | None) -> None:
        previous = self._materialised.pop(slot, None)
        if previous is not None and previous != now_serving:
            shutil.rmtree(previous, ignore_errors=True)
        if now_serving is not None:
            self._materialised[slot] = now_serving
