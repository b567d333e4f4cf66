"""The demo's verdict over several seeds of the evolution: each paired difference's mean and interval per seed,
and their spread, so a verdict that one seed's children or ties decide shows as such."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.table import Table

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import CandidateKind
from cycleqd.db.store import Store
from cycleqd.evolution.report import final_rows
from cycleqd.evolver.config import EvolveConfig
from cycleqd.results.intervals import run_final_intervals

FINAL_AVERAGE = "CycleQD final (average)"
BEST_EXPERT = re.compile(r"final − best expert \((expert .+), average\)")


@dataclass(frozen=True)
class Verdict:
    mean: float
    low: float
    high: float
    which: str = ""  # for "final − best expert": which expert was the best in that run

    def describe(self) -> str:
        named = f" ({self.which})" if self.which else ""
        return f"{self.mean:+.3f} [{self.low:+.2f}, {self.high:+.2f}]{named}"


def seed_verdicts(store: Store, runs: list[tuple[str, EvolveConfig]]) -> dict[str, dict[int, Verdict]]:
    """Per comparison (the final model's average, then each paired difference), each run's verdict by its index
    in `runs`. "final − best expert" is one comparison whichever expert was best; the cell names it."""
    verdicts: dict[str, dict[int, Verdict]] = {}
    for index, (run_id, config) in enumerate(runs):
        rows = final_rows(EvolutionStore(store, run_id), list(config.task_names))
        intervals = run_final_intervals(store, run_id, rows, config.tasks)
        final = next(row for row in rows if row.kind == CandidateKind.FINAL)
        average = intervals.averages.get(final.candidate_id)
        if average is not None:
            verdicts.setdefault(FINAL_AVERAGE, {})[index] = Verdict(average.estimate, average.low, average.high)
        for label, interval in intervals.differences:
            best = BEST_EXPERT.fullmatch(label)
            key = "final − best expert (average)" if best else label
            verdict = Verdict(interval.estimate, interval.low, interval.high, best.group(1) if best else "")
            verdicts.setdefault(key, {})[index] = verdict
    return verdicts


def seed_spread_table(store: Store, runs: list[tuple[str, EvolveConfig]]) -> Table:
    seeds = [config.seed for _, config in runs]
    table = Table("comparison", *(f"seed {s}" for s in seeds), "spread of the means", "above 0 in",
                  title=f"over {len(seeds)} seeds of the evolution (95% intervals over tasks)")  # fmt: skip
    for label, by_run in seed_verdicts(store, runs).items():
        means = [v.mean for v in by_run.values()]
        cells = [by_run[i].describe() if i in by_run else "" for i in range(len(runs))]  # one a run could not make
        above = "" if label == FINAL_AVERAGE else f"{sum(v.low > 0 for v in by_run.values())} of {len(by_run)}"
        table.add_row(label, *cells, f"{max(means) - min(means):.3f}", above)
    return table
