"""Confidence intervals for scores over tasks: exact-based ones for pass/fail scores, a percentile bootstrap else.

Pass/fail scores (every task's score 0 or 1, the usual case) get intervals whose coverage holds at small n, where a
bootstrap's does not (it gives [0, 0] for 0 of 25, whose exact interval is [0, 0.137]):
- a mean: Clopper–Pearson, exact (coverage ≥ 95% for every p);
- a paired difference (A − B on the same tasks): Newcombe's hybrid score interval for paired proportions (method 10
  of Newcombe 1998, Wilson score limits for each margin, the correlation φ with its continuity correction);
- a mean of several environments' means (strata): MOVER (Zou & Donner 2008) over the strata's intervals, i.e.
  estimate ∓ the root sum of squares of each stratum's distance to its limits, weighted 1/strata.
Their coverage is checked by simulation in tests/test_stats.py. Any other score (partial credit, repeats averaged
to 0.5) falls back to the bootstrap below, and the interval says which method made it.

Bootstrap: tasks are the unit of resampling (a task's repeats are averaged first), because the question a table
answers is "would this hold on other tasks like these". A score over several environments is the mean of the per-
environment means, so it is resampled stratified: tasks are drawn within each environment, never across. A paired
difference (model A − model B on the same tasks) resamples the per-task differences, which is far tighter than
comparing two independent intervals when the models agree on most tasks. Every function takes a seed; the same
inputs and seed give the same interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the sample itself
    low: float
    high: float
    n: int  # tasks (summed over strata)
    method: str = "bootstrap"  # bootstrap, clopper-pearson, newcombe-paired, or mover(<theirs>) over strata

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def describe(self, signed: bool = False) -> str:
        number = "{:+.3f}" if signed else "{:.3f}"
        return f"{number.format(self.estimate)} [{number.format(self.low)}, {number.format(self.high)}]"

    def to_json(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


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


def is_pass_fail(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def mean_ci(values: Sequence[float], **options: float | int) -> Interval:
    """The mean's interval: Clopper–Pearson for pass/fail scores, the bootstrap for any other."""
    if values and is_pass_fail(values):
        confidence = float(options.get("confidence", CONFIDENCE))
        return clopper_pearson(int(sum(values)), len(values), confidence)
    return bootstrap_ci([values], **options)  # type: ignore[arg-type]


def strata_ci(strata: Sequence[Sequence[float]], **options: float | int) -> Interval:
    """The interval of the mean of the strata's means: MOVER over each stratum's mean_ci when all are pass/fail,
    else the stratified bootstrap. Empty strata are ignored, as the bootstrap ignores them."""
    groups = [list(s) for s in strata if len(s)]
    if groups and all(is_pass_fail(g) for g in groups):
        return mover([mean_ci(g, **options) for g in groups])
    return bootstrap_ci(groups, **options)


@functools.lru_cache(maxsize=4096)  # a table asks for the same few (k, n) many times; each is 60 bisection steps
def clopper_pearson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """The exact interval of a proportion: the p whose binomial tails beyond the observed count are (1−c)/2."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a proportion needs 0 ≤ successes ≤ n and n > 0, got {successes} of {n}")
    alpha = (1 - confidence) / 2
    low = 0.0 if successes == 0 else _solve(lambda p: _upper_tail(successes, n, p) - alpha)
    high = 1.0 if successes == n else _solve(lambda p: _upper_tail(successes + 1, n, p) - (1 - alpha))
    return Interval(successes / n, low, high, n, "clopper-pearson")


def _upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed in log space (no overflow for large n); increasing in p."""
    if p <= 0.0:
        return 0.0 if k > 0 else 1.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]  # fmt: skip
    top = max(terms, default=-math.inf)
    return 0.0 if top == -math.inf else min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _solve(increasing: object) -> float:
    """The root in [0, 1] of an increasing function, by bisection to 1e-12."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if increasing(mid) < 0:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@functools.lru_cache(maxsize=4096)
def newcombe_paired(both: int, only_a: int, only_b: int, neither: int, confidence: float = CONFIDENCE) -> Interval:
    """Newcombe's (1998, method 10) interval of p_A − p_B from a paired 2×2 table of pass/fail tasks."""
    n = both + only_a + only_b + neither
    if n == 0:
        raise ValueError("a paired interval needs at least one task")
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    (l_a, u_a), (l_b, u_b) = wilson(both + only_a, n, confidence), wilson(both + only_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    if cross > 0:
        cross = max(cross - n / 2, 0.0)  # Newcombe's continuity correction of φ
    phi = cross / math.sqrt(margins) if margins else 0.0
    delta = math.sqrt(max(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
    epsilon = math.sqrt(max(0.0, (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2))
    estimate = p_a - p_b
    return Interval(estimate, max(-1.0, estimate - delta), min(1.0, estimate + epsilon), n, "newcombe-paired")


def mover(parts: Sequence[Interval]) -> Interval:
    """The interval of the mean of several independent estimates, from each one's own interval (MOVER)."""
    if not parts:
        raise ValueError("MOVER needs at least one interval")
    if len(parts) == 1:
        return parts[0]
    w = 1 / len(parts)
    estimate = w * math.fsum(p.estimate for p in parts)
    below = w * math.sqrt(math.fsum((p.estimate - p.low) ** 2 for p in parts))
    above = w * math.sqrt(math.fsum((p.high - p.estimate) ** 2 for p in parts))
    methods = sorted({p.method for p in parts})
    return Interval(estimate, estimate - below, estimate + above, sum(p.n for p in parts),
                    f"mover({', '.join(methods)})")  # fmt: skip


TaskScores = Mapping[Hashable, float]  # a task's key → its score (repeats already averaged)


def paired_differences(a: TaskScores, b: TaskScores) -> list[float]:
    """a − b on the tasks both were scored on (a task missing from either is left out, never counted as 0)."""
    return [a[key] - b[key] for key in a if key in b]


def paired_ci(a: Sequence[TaskScores], b: Sequence[TaskScores], **options: float | int) -> Interval:
    """Interval of mean(a) − mean(b) over strata (one mapping per environment), paired task by task: Newcombe's
    paired interval per stratum, combined by MOVER, when every paired score is pass/fail; else the bootstrap of the
    per-task differences."""
    pairs = [[(x[key], y[key]) for key in x if key in y] for x, y in zip(a, b, strict=True)]
    pairs = [p for p in pairs if p]
    if pairs and all(is_pass_fail([v for pair in p for v in pair]) for p in pairs):
        confidence = float(options.get("confidence", CONFIDENCE))
        tables = [[sum(1 for pair in p if pair == cell) for cell in ((1, 1), (1, 0), (0, 1), (0, 0))] for p in pairs]
        return mover([newcombe_paired(*table, confidence=confidence) for table in tables])
    return bootstrap_ci([paired_differences(x, y) for x, y in zip(a, b, strict=True)], **options)  # type: ignore[arg-type]


def per_task_means(scores: Sequence[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """(task, score) pairs, several per task when repeated, as one mean score per task."""
    totals: dict[Hashable, list[float]] = {}
    for key, score in scores:
        totals.setdefault(key, []).append(score)
    return {key: sum(values) / len(values) for key, values in totals.items()}
