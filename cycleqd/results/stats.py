"""Confidence intervals for scores: a percentile bootstrap over tasks.

Tasks are the unit of resampling (a task's repeats are averaged first), because the question a table answers is
"would this hold on other tasks like these". A score over several environments is the mean of the per-environment
means, so it is resampled stratified: tasks are drawn within each environment, never across. A paired difference
(model A − model B on the same tasks) resamples the per-task differences, which is far tighter than comparing
two independent intervals when the models agree on most tasks.

Every function takes a seed; the same inputs and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the sample itself
    low: float
    high: float
    n: int  # tasks (summed over strata)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def describe(self, signed: bool = False) -> str:
        number = "{:+.3f}" if signed else "{:.3f}"
        return f"{number.format(self.estimate)} [{number.format(self.low)}, {number.format(self.high)}]"

    def to_json(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_ci(
    strata: Sequence[Sequence[float]], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Percentile interval of the mean of the strata's means; each stratum is resampled with replacement on its
    own. One stratum gives the ordinary bootstrap of a mean. Empty strata are ignored; none at all is an error."""
    groups = [np.asarray(s, dtype=float) for s in strata if len(s)]
    if not groups:
        raise ValueError("a bootstrap needs at least one score")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for group in groups:
        draws = rng.integers(0, len(group), size=(resamples, len(group)))
        means += group[draws].mean(axis=1)
    means /= len(groups)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    estimate = float(np.mean([g.mean() for g in groups]))
    return Interval(estimate, float(low), float(high), sum(len(g) for g in groups))


def mean_ci(values: Sequence[float], **options: float | int) -> Interval:
    return bootstrap_ci([values], **options)  # type: ignore[arg-type]


TaskScores = Mapping[Hashable, float]  # a task's key → its score (repeats already averaged)


def paired_differences(a: TaskScores, b: TaskScores) -> list[float]:
    """a − b on the tasks both were scored on (a task missing from either is left out, never counted as 0)."""
    return [a[key] - b[key] for key in a if key in b]


def paired_ci(a: Sequence[TaskScores], b: Sequence[TaskScores], **options: float | int) -> Interval:
    """Interval of mean(a) − mean(b) over strata (one mapping per environment), paired task by task."""
    return bootstrap_ci([paired_differences(x, y) for x, y in zip(a, b, strict=True)], **options)  # type: ignore[arg-type]


def per_task_means(scores: Sequence[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """(task, score) pairs, several per task when repeated, as one mean score per task."""
    totals: dict[Hashable, list[float]] = {}
    for key, score in scores:
        totals.setdefault(key, []).append(score)
    return {key: sum(values) / len(values) for key, values in totals.items()}
