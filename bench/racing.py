"""Episodes saved by racing (evolver/racing.py), measured side by side on one replayed evolution.

    python -m bench.racing [--generations 1000] [--episodes 100] [--bins 15] [--seed 0] [--mutation-std 0.06]
                           [--hoeffding]

A simulated population whose per-task success rates spread like the paper's experts and children (30–75%):
three experts, each strong on its own task; a child's rates are its parents' rates mixed by the crossover weights
plus a mutation step (Gaussian, --mutation-std per task), kept within 30–75%. Every child's episodes (3 tasks ×
--episodes, Bernoulli at its rates) are drawn once from (seed, generation), so the runs see the same outcomes. The
loop is the real one, one child per generation: elite sampling from the active task's archive, the archives of
evolver/archive.py, the paper's BC ranges from the experts' measured scores, --bins bins per BC.

The run without racing plays every episode; the run with exact racing plays them in the order its race chooses
and stops once no archive can take the child. Printed at generations 50, 200 and 1,000: episodes per child with
racing ÷ without (over the last 50 generations, and since the start), whether the archives are identical
(they must be: exact racing changes no archive), and the share of children no archive took in the run without
racing (the only children an exact rule may stop). Goal: ≤ 0.5 by generation 200. --hoeffding adds the statistical
(inexact) variant, δ = 0.05, and reports how many cells its archives got wrong.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import numpy as np

from cycleqd.evolver.archive import Elite, GridArchive, paper_bc_range
from cycleqd.evolver.racing import Race
from cycleqd.evolver.sampling import sample_parents

NAMES = ("os", "db", "coding")
RATE_RANGE = (0.30, 0.75)
EXPERT_RATES = ((0.70, 0.35, 0.40), (0.40, 0.72, 0.35), (0.35, 0.42, 0.68))
CHECKPOINTS = (50, 200, 1000)
WINDOW = 50


def outcomes(key: list[int], rates: np.ndarray, episodes: int) -> list[list[float]]:
    rng = np.random.default_rng(key)
    return [[float(x) for x in rng.random(episodes) < p] for p in rates]


def child_rates(
    seed: int, generation: int, first: np.ndarray, second: np.ndarray, mutation_std: float
) -> tuple[np.ndarray, int]:
    """Crossover of the parents' rates (ω ~ N(1, 0.01²)), then a mutation step; the rng also picks parents."""
    rng = np.random.default_rng([seed, generation, 2])
    w1, w2 = rng.normal(1.0, 0.01, 2)
    mixed = (w1 * first + w2 * second) / (w1 + w2)
    return np.clip(mixed + rng.normal(0.0, mutation_std, 3), *RATE_RANGE), int(rng.integers(2**31 - 1))


@dataclass
class Run:
    """One replay of the evolution; `kind` is the racing rule (off plays everything)."""

    kind: str
    archives: list[GridArchive]
    rates: dict[int, np.ndarray]
    mutation_std: float = 0.06
    played: list[int] = field(default_factory=list)  # per generation
    taken: list[bool] = field(default_factory=list)  # per generation: did some archive take the child

    def generation(self, seed: int, g: int, episodes: int) -> None:
        q = (g - 1) % len(NAMES)
        parent_rng = np.random.default_rng([seed, g, 0])
        fallback = [e for a in self.archives for e in a.ordered_elites()]
        first, second = sample_parents(self.archives[q], parent_rng, fallback=fallback)
        rates, _ = child_rates(seed, g, self.rates[first.candidate_id], self.rates[second.candidate_id],
                               self.mutation_std)  # fmt: skip
        self.rates[g] = rates
        drawn = outcomes([seed, g, 1], rates, episodes)
        race = Race(self.archives, self.kind)
        race.plan([episodes] * len(NAMES))
        piles = [list(reversed(o)) for o in drawn]
        while not race.rejected and any(piles):
            k = race.start_next([i for i, pile in enumerate(piles) if pile])
            race.observe(k, piles[k].pop())
        self.played.append(race.played)
        taken = False
        if not race.rejected:
            scores = tuple(math.fsum(o) / len(o) for o in drawn)
            taken = any([archive.offer(Elite(g, f"child-{g}", scores)).status for archive in self.archives])
        self.taken.append(taken)

    def cells(self) -> dict[tuple[str, tuple[int, ...]], tuple[int, float]]:
        return {(a.name, cell): (e.candidate_id, a.quality(e.scores)) for a in self.archives
                for cell, e in a.elites.items()}  # fmt: skip


def seeded_run(kind: str, seed: int, episodes: int, bins: int, mutation_std: float) -> Run:
    expert_scores = []
    rates = {}
    for k, expert in enumerate(EXPERT_RATES):
        rates[-1 - k] = np.array(expert)
        drawn = outcomes([seed, 0, 3 + k], rates[-1 - k], episodes)
        expert_scores.append(tuple(math.fsum(o) / len(o) for o in drawn))
    ranges = [paper_bc_range([s[j] for s in expert_scores]) for j in range(len(NAMES))]
    archives = [GridArchive(k, NAMES, bins, tuple(ranges[j] for j in range(len(NAMES)) if j != k))
                for k in range(len(NAMES))]  # fmt: skip
    for k, scores in enumerate(expert_scores):
        for archive in archives:
            archive.offer(Elite(-1 - k, f"expert-{k}", scores))
    return Run(kind, archives, rates, mutation_std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task")
    parser.add_argument("--bins", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mutation-std", type=float, default=0.06, help="a child's rate step per task")
    parser.add_argument("--hoeffding", action="store_true", help="also run the inexact statistical variant")
    args = parser.parse_args()
    kinds = ["off", "exact", *(["hoeffding"] if args.hoeffding else [])]
    runs = {kind: seeded_run(kind, args.seed, args.episodes, args.bins, args.mutation_std) for kind in kinds}
    planned = args.episodes * len(NAMES)
    print(f"{len(NAMES)} tasks × {args.episodes} episodes, {args.bins} bins, rates {RATE_RANGE[0]:.0%}–"
          f"{RATE_RANGE[1]:.0%}, mutation step {args.mutation_std}, seed {args.seed}; episodes per child with "
          "racing ÷ without")  # fmt: skip
    started = time.monotonic()
    checkpoints = sorted({g for g in CHECKPOINTS if g <= args.generations} | {args.generations})
    for g in range(1, args.generations + 1):
        for run in runs.values():
            run.generation(args.seed, g, args.episodes)
        if g not in checkpoints:
            continue
        plain = runs["off"]
        assert sum(plain.played) == planned * g
        for kind, run in runs.items():
            if kind == "off":
                continue
            window = sum(run.played[-WINDOW:]) / (planned * min(WINDOW, g))
            overall = sum(run.played) / (planned * g)
            same = run.cells() == plain.cells()
            wrong = len(set(run.cells().items()) ^ set(plain.cells().items()))
            verdict = "archives identical" if same else f"archives DIFFER ({wrong} cell entries)"
            label = "exact" if kind == "exact" else "hoeffding δ=0.05 (inexact)"
            goal = "  (goal ≤ 0.5 by generation 200)" if kind == "exact" and g == 200 else ""
            print(f"generation {g:>4}  {label:<27} last {min(WINDOW, g)}: {window:.3f}  since start: {overall:.3f}"
                  f"  {verdict}{goal}", flush=True)  # fmt: skip
            if kind == "exact" and not same:
                raise SystemExit("exact racing changed the archives: a bug")
        coverage = sum(len(a.elites) for a in plain.archives) / sum(a.cells_total for a in plain.archives)
        refused = 1 - sum(plain.taken[-WINDOW:]) / min(WINDOW, g)
        print(f"                 coverage {coverage:.2f}; children no archive took, last {min(WINDOW, g)}: "
              f"{refused:.0%} (what any exact rule could at most skip); {time.monotonic() - started:.0f} s",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
