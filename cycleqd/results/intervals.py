"""Scores as the store holds them, turned into 95% intervals: one per (model, environment, split) for `eval` and
`show`, and for an evolution's final table one per cell plus the paired differences the method is judged by
(final − naive merge, final − best expert, each expert − base on its own task). The methods are
`cycleqd.results.stats`'s: exact-based for pass/fail scores (Clopper–Pearson, Newcombe's paired interval, MOVER
over environments), the bootstrap over tasks for any other."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

from cycleqd.db.schema import CandidateKind
from cycleqd.db.store import Store
from cycleqd.evolution.loop import FinalRow
from cycleqd.results.stats import Interval, mean_ci, paired_ci, per_task_means, strata_ci

TaskScores = dict[str, float]  # task key → mean score over its repeats


def run_task_scores(store: Store, run_id: str) -> dict[tuple[int, str, str], TaskScores]:
    """Per (model, env, split): each task's mean score."""
    pairs: dict[tuple[int, str, str], list[tuple[str, float]]] = defaultdict(list)
    for model_id, env, split, key, score in store.scored_tasks(run_id):
        pairs[(model_id, env, split)].append((key, score))
    return {group: per_task_means(values) for group, values in pairs.items()}  # type: ignore[misc]


Intervals = dict[tuple[int, str, str], Interval]  # (model, env, split) → its 95% interval over tasks


def aggregate_intervals(store: Store, run_id: str) -> Intervals:
    """A 95% interval over tasks for each (model, env, split) of the run."""
    return {group: mean_ci(list(scores.values())) for group, scores in run_task_scores(store, run_id).items()}


@dataclass(frozen=True)
class HeldOutSpec:
    name: str
    env: str
    split: str


@dataclass(frozen=True)
class FinalIntervals:
    cells: dict[tuple[int, str], Interval]  # (candidate, task name) → interval
    averages: dict[int, Interval]  # candidate → interval of the average over tasks
    differences: list[tuple[str, Interval]]  # what is compared, paired over the same tasks


def final_intervals(store: Store, run_id: str, rows: list[FinalRow], specs: Sequence[HeldOutSpec],
                    model_of: dict[int, int | None]) -> FinalIntervals:  # fmt: skip
    """Intervals of the final table's rows; `model_of` maps a row's candidate to the model its episodes ran as."""
    scores = run_task_scores(store, run_id)

    def of(row: FinalRow) -> list[TaskScores]:
        model = model_of.get(row.candidate_id)
        return [scores.get((model, s.env, s.split), {}) if model is not None else {} for s in specs]

    cells: dict[tuple[int, str], Interval] = {}
    averages: dict[int, Interval] = {}
    for row in rows:
        per_task = of(row)
        for spec, values in zip(specs, per_task, strict=True):
            if values:
                cells[(row.candidate_id, spec.name)] = mean_ci(list(values.values()))
        if all(per_task):
            averages[row.candidate_id] = strata_ci([list(v.values()) for v in per_task])
    return FinalIntervals(cells, averages, _differences(rows, specs, of))


def _differences(rows: list[FinalRow], specs: Sequence[HeldOutSpec], of) -> list[tuple[str, Interval]]:  # noqa: ANN001
    by_kind = {
        row.kind: row for row in rows if row.kind in (CandidateKind.BASE, CandidateKind.MERGE, CandidateKind.FINAL)
    }
    experts = [row for row in rows if row.kind == CandidateKind.EXPERT]
    out: list[tuple[str, Interval]] = []

    def add(label: str, a: list[TaskScores], b: list[TaskScores]) -> None:
        if any(x.keys() & y.keys() for x, y in zip(a, b, strict=True)):
            out.append((label, paired_ci(a, b)))

    final = by_kind.get(CandidateKind.FINAL)
    if final and CandidateKind.MERGE in by_kind:
        add("final − naive merge (average)", of(final), of(by_kind[CandidateKind.MERGE]))
    for baseline in (row for row in rows if row.kind in (CandidateKind.SEARCH, CandidateKind.BASELINE)):
        if final:
            add(f"final − {baseline.label} (average)", of(final), of(baseline))
    if final and experts:
        best = max(experts, key=lambda r: r.average)
        add(f"final − best expert ({best.label}, average)", of(final), of(best))
    if CandidateKind.BASE in by_kind:
        base = of(by_kind[CandidateKind.BASE])
        for index, expert in enumerate(experts):
            own = next((i for i, s in enumerate(specs) if expert.label == f"expert {s.name}"), index)
            if own < len(specs):
                add(f"{expert.label} − base on {specs[own].name}", [of(expert)[own]], [base[own]])
    return out


def final_tables(rows: list[FinalRow], names: list[str], intervals: FinalIntervals | None,
                 headers: list[str] | None = None) -> list[Table]:  # fmt: skip
    """The final table (each cell with its 95% interval when known) and the paired differences; `headers` label
    the tasks' columns (default: their names)."""
    title = "held-out test splits (95% intervals over tasks: " + _methods(intervals) + ")"
    table = Table("model", *(headers or names), "average", title=title)
    for row in rows:
        cells = [_cell(row.test_scores.get(n, 0.0), intervals and intervals.cells.get((row.candidate_id, n)))
                 for n in names]  # fmt: skip
        table.add_row(row.label, *cells, _cell(row.average, intervals and intervals.averages.get(row.candidate_id)))
    tables = [table]
    if intervals and intervals.differences:
        paired = Table("paired difference", "mean [95% interval]", "tasks", "above 0", "method",
                       title="paired over tasks")  # fmt: skip
        for label, interval in intervals.differences:
            paired.add_row(label, interval.describe(signed=True), str(interval.n),
                           "yes" if interval.low > 0 else "no", interval.method)  # fmt: skip
        tables.append(paired)
    return tables


def _methods(intervals: FinalIntervals | None) -> str:
    """The methods behind the table's cells: a cell is pass/fail-exact or bootstrapped, and the reader is told."""
    used = sorted({i.method for i in (*intervals.cells.values(), *intervals.averages.values())}) if intervals else []
    return ", ".join(used) or "none"


def _cell(score: float, interval: Interval | None) -> str:
    return f"{score:.3f} [{interval.low:.2f}, {interval.high:.2f}]" if interval else f"{score:.3f}"


def held_out_specs(tasks: Sequence[object]) -> list[HeldOutSpec]:
    """The test split of each task of an evolution, from its config's task specs or their stored dicts."""

    def get(task: object, key: str, default: str) -> str:
        return str(task.get(key, default) if isinstance(task, dict) else getattr(task, key, default))

    return [HeldOutSpec(get(t, "name", ""), get(t, "env", ""), get(t, "test_split", "test")) for t in tasks]


def run_final_intervals(store: Store, run_id: str, rows: list[FinalRow], tasks: Sequence[object]) -> FinalIntervals:
    from cycleqd.db.evolution_store import EvolutionStore

    model_of = {c.id: c.model_id for c in EvolutionStore(store, run_id).candidates()}
    return final_intervals(store, run_id, rows, held_out_specs(tasks), model_of)


def final_report_tables(store: Store, run_id: str, rows: list[FinalRow], tasks: Sequence[object]) -> list[Table]:
    """What `evolve`, `report` and `demo` print at the end: the final table with intervals, then the differences."""
    specs = held_out_specs(tasks)
    headers = [s.name if s.split == "test" else f"{s.name} ({s.split})" for s in specs]  # e.g. "os (transfer)"
    return final_tables(rows, [s.name for s in specs], run_final_intervals(store, run_id, rows, tasks), headers)


def final_intervals_json(intervals: FinalIntervals, rows: list[FinalRow]) -> dict[str, object]:
    """`evolve --json`'s intervals: per row its tasks' and average's, and the paired differences."""
    per_row = {
        row.label: {"average": a.to_json() if (a := intervals.averages.get(row.candidate_id)) else None}
        | {name: i.to_json() for (candidate, name), i in intervals.cells.items() if candidate == row.candidate_id}
        for row in rows
    }
    return {"rows": per_row, "differences": [{"compared": label, **i.to_json()} for label, i in intervals.differences]}
