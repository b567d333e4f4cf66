"""Tiny Llama experts and a cheap, real skill measure for testing the evolution loop without episodes.

Task k's score is the fraction of probe positions where the candidate's greedy next token equals expert k's: a
real function of the materialised weights (expert k scores 1 on its own task, merges land in between), computed
in-process in milliseconds. Each position is one "episode" scoring 0 or 1, so a child can be raced like one
playing real episodes (the evaluator reveals positions in the order the race asks and stops when it says so).
Also runnable as a script, so that a test can SIGKILL an evolution mid-generation.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import open_store
from cycleqd.evolution.loop import CandidateEvaluator, CandidateUnderTest, Evolution
from cycleqd.evolver.config import EvolveConfig, parse_config
from cycleqd.evolver.materialize import materialize
from cycleqd.evolver.racing import Race
from cycleqd.evolver.svd_cache import SVDCache, build_svd_cache

TASKS = ("os", "db", "coding")
PROBES = 6
PROBE_LENGTH = 12


def tiny_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False)  # fmt: skip


def make_tiny_family(root: Path, experts: int = 3, scale: float = 0.05) -> tuple[Path, list[Path]]:
    """A random bf16 base and `experts` full-rank perturbations of it, saved as checkpoints under `root`."""
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config()).to(torch.bfloat16)
    base.save_pretrained(root / "base")
    paths = []
    for k in range(experts):
        generator = torch.Generator().manual_seed(100 + k)
        expert = LlamaForCausalLM(tiny_config()).to(torch.bfloat16)
        expert.load_state_dict(base.state_dict())
        with torch.no_grad():
            for parameter in expert.parameters():
                noise = torch.randn(parameter.shape, generator=generator) * scale * (parameter.float().std() + 0.02)
                parameter.add_(noise.to(parameter.dtype))
        expert.save_pretrained(root / f"expert-{k}")
        paths.append(root / f"expert-{k}")
    return root / "base", paths


def probe_inputs(task: int) -> torch.Tensor:
    return torch.randint(0, 128, (PROBES, PROBE_LENGTH), generator=torch.Generator().manual_seed(7 + task))


# transformers' from_pretrained patches torch globally while it builds a model on the meta device; two calls in
# two threads at once can leave that patch in place for the rest of the process, so loads take turns.
_LOADING = threading.Lock()


def greedy_tokens(folder: Path, task: int) -> torch.Tensor:
    with _LOADING:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(probe_inputs(task)).logits.argmax(-1)


def probe_config(base: Path, experts: list[Path], **settings: object) -> EvolveConfig:
    tasks = [{"name": name, "env": "coding", "expert": str(path)} for name, path in zip(TASKS, experts, strict=True)]
    return parse_config({"base": str(base), "tasks": tasks, **settings}, "<probe>", Path("/"))


class ProbeEvaluator:
    """Scores candidates by agreement with each expert's greedy tokens; `delays[slot]` seconds per evaluation.

    `episodes` counts the selection positions revealed; `full_scores` keeps every candidate's scores over all
    positions, raced or not, so that a test can check what a child rejected early would have scored."""

    races = True

    def __init__(self, cache: SVDCache, experts: list[Path], work: Path, delays: tuple[float, ...] = (0.0,)) -> None:
        self.cache = cache
        self.work = work
        self.delays = delays
        self.slots = len(delays)
        self.references = [greedy_tokens(path, k) for k, path in enumerate(experts)]
        self.evaluated: list[tuple[int, bool]] = []
        self.episodes = 0
        self.full_scores: dict[int, dict[str, float]] = {}

    async def evaluate(
        self, slot: int, candidate: CandidateUnderTest, test: bool, race: Race | None = None
    ) -> tuple[int | None, dict]:
        folder = candidate.checkpoint
        if folder is None:
            assert candidate.genome is not None and candidate.genome_hash is not None
            out = self.work / candidate.genome_hash
            folder = await asyncio.to_thread(materialize, candidate.genome, self.cache, out)
        await asyncio.sleep(self.delays[slot])
        outcomes = []
        for k in range(len(TASKS)):
            tokens = await asyncio.to_thread(greedy_tokens, folder, k)
            outcomes.append([float(x) for x in (tokens == self.references[k]).flatten().tolist()])
        scores = {name: math.fsum(o) / len(o) for name, o in zip(TASKS, outcomes, strict=True)}
        self.evaluated.append((candidate.candidate_id, test))
        if not test:
            self.full_scores[candidate.candidate_id] = scores
            self.episodes += self._race(race, outcomes) if race is not None else sum(map(len, outcomes))
        return None, scores

    @staticmethod
    def _race(race: Race, outcomes: list[list[float]]) -> int:
        """Reveal positions one by one in the race's order until it rejects the child or all are played."""
        race.plan([len(o) for o in outcomes])
        left = [list(reversed(o)) for o in outcomes]
        while not race.rejected and any(left):
            k = race.start_next([i for i, pile in enumerate(left) if pile])
            race.observe(k, left[k].pop())
        return race.played


class ProbeNode(ProbeEvaluator):
    """The probe evaluator as a slot builds it on its own node (a Ray actor): the family and its SVD cache are read
    from `root`, a path every node sees (built there by `build_svd_cache` if missing)."""

    def __init__(self, root: Path, delays: tuple[float, ...] = (0.0,)) -> None:
        experts = [root / f"expert-{k}" for k in range(len(TASKS))]
        cache = build_svd_cache(root / "base", experts, root / "cache", progress=False)
        super().__init__(cache, experts, root / "work", delays)


def stored_cells(evo: EvolutionStore) -> dict[tuple[str, str], tuple[int, float]]:
    names = {a.id: a.task_name for a in evo.archives()}
    return {(names[c.archive_id], c.cell): (c.candidate_id, c.quality) for c in evo.cells()}


def snapshot(db: Path, run_id: str) -> tuple[dict, list]:
    evo = EvolutionStore(open_store(db), run_id)
    cells = {key: (evo.candidate(cid).genome_hash, quality) for key, (cid, quality) in stored_cells(evo).items()}
    children = [(c.generation, c.slot, c.genome_hash, c.scores, c.parents != [], c.omegas, c.mutation)
                for c in evo.candidates("child")]  # fmt: skip
    return cells, children


def run_probe_evolution(  # noqa: ANN201
    db: Path,
    root: Path,
    run_id: str | None,
    delays: tuple[float, ...],
    evaluator: CandidateEvaluator | None = None,
    **settings: object,
):
    """One evolution over the tiny family under `root` (made if missing); returns (run id, final rows, evaluator).
    `evaluator` replaces the in-process probe evaluator (e.g. by its Ray counterpart)."""
    if not (root / "base").exists():
        make_tiny_family(root)
    base, experts = root / "base", [root / f"expert-{k}" for k in range(len(TASKS))]
    config = probe_config(base, experts, **settings)
    cache = build_svd_cache(base, experts, root / "cache", progress=False)
    store = open_store(db)
    run = store.get_run(run_id) if run_id else store.create_run("evolve", config.snapshot())
    assert run is not None
    evaluator = evaluator or ProbeEvaluator(cache, experts, root / "work", delays)
    evolution = Evolution(config, EvolutionStore(store, run.id), cache, root / "genomes", evaluator)
    rows = asyncio.run(evolution.run())
    return run.id, rows, evaluator


if __name__ == "__main__":
    # tests/evolution_probe.py DB ROOT GENERATIONS: an evolution a test can kill; prints the run id first.
    db_path, family, generations = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    started = time.monotonic()
    run_probe_evolution(db_path, family, None, (0.05, 0.6), generations=generations, bins=4, mode="sync")
    print(f"finished in {time.monotonic() - started:.1f} s", flush=True)
