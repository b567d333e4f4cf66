"""Confidence intervals for scores: a percentile bootstrap over tasks.

Tasks are the unit that was sampled (repeats of one task are not independent draws), so a resample draws tasks
with replacement and takes the mean over all scored episodes of the tasks drawn: the point estimate is then the
plain mean over episodes, the number the store's aggregates hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    tasks: int

    def describe(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_mean(
    per_task: Sequence[Sequence[float]], *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval | None:
    """The mean over every value, and its `confidence` interval over tasks; None when no task has a value.
    The same seed gives the same interval, so a table printed twice reads the same."""
    tasks = [values for values in per_task if len(values)]
    if not tasks:
        return None
    sums = np.array([float(sum(values)) for values in tasks])
    counts = np.array([len(values) for values in tasks], dtype=float)
    mean = float(sums.sum() / counts.sum())
    if len(tasks) == 1:
        return Interval(mean, mean, mean, 1)
    draws = np.random.default_rng(seed).integers(0, len(tasks), size=(resamples, len(tasks)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(low), float(high), len(tasks))
