"""The demo's verdict over several seeds of the evolution: each paired difference's mean and interval per seed,
and their spread, so a verdict that one seed's children or ties decide shows as such."""

from __future__ import annotations

from rich.table import Table

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import Store
from cycleqd.evolve.report import final_rows
from cycleqd.evolver.config import EvolveConfig
from cycleqd.results.intervals import run_final_intervals

FINAL_AVERAGE = "CycleQD final (average)"


def seed_verdicts(store: Store, runs: list[tuple[str, EvolveConfig]]) -> dict[str, list[tuple[float, float, float]]]:
    """Per comparison (the final model's average, then each paired difference): (mean, low, high) of every run."""
    verdicts: dict[str, list[tuple[float, float, float]]] = {}
    for run_id, config in runs:
        rows = final_rows(EvolutionStore(store, run_id), list(config.task_names))
        intervals = run_final_intervals(store, run_id, rows, config.tasks)
        final = next(row for row in rows if row.kind == "final")
        average = intervals.averages.get(final.candidate_id)
        if average is not None:
            verdicts.setdefault(FINAL_AVERAGE, []).append((average.estimate, average.low, average.high))
        for label, interval in intervals.differences:
            verdicts.setdefault(label, []).append((interval.estimate, interval.low, interval.high))
    return verdicts


def seed_spread_table(store: Store, runs: list[tuple[str, EvolveConfig]]) -> Table:
    seeds = [config.seed for _, config in runs]
    table = Table("comparison", *(f"seed {s}" for s in seeds), "spread of the means", "above 0 in",
                  title=f"over {len(seeds)} seeds of the evolution (95% intervals over tasks)")  # fmt: skip
    for label, values in seed_verdicts(store, runs).items():
        means = [mean for mean, _, _ in values]
        cells = [f"{mean:+.3f} [{low:+.2f}, {high:+.2f}]" for mean, low, high in values]
        cells += [""] * (len(seeds) - len(cells))  # a comparison one run could not make
        above = "" if label == FINAL_AVERAGE else f"{sum(low > 0 for _, low, _ in values)} of {len(values)}"
        table.add_row(label, *cells, f"{max(means) - min(means):.3f}", above)
    return table
