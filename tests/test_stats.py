"""The bootstrap's intervals against an exact enumeration of every resample (an independent computation)."""

import itertools

import numpy as np
import pytest

from cycleqd.results.stats import bootstrap_ci, mean_ci, paired_ci, per_task_means


def exact_percentiles(strata: list[list[float]], confidence: float = 0.95) -> tuple[float, float]:
    """Every ordered resample of every stratum, equally likely: the bootstrap distribution with no sampling error."""
    per_stratum = [[float(np.mean(pick)) for pick in itertools.product(s, repeat=len(s))] for s in strata]
    means = [float(np.mean(combo)) for combo in itertools.product(*per_stratum)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def test_mean_interval_matches_exact_enumeration() -> None:
    sample = [0.1, 0.4, 0.35, 0.9, 0.75, 0.2]
    exact = exact_percentiles([sample])
    got = mean_ci(sample, resamples=200_000, seed=1)
    assert got.estimate == pytest.approx(np.mean(sample))
    assert got.low == pytest.approx(exact[0], abs=0.01)
    assert got.high == pytest.approx(exact[1], abs=0.01)
    assert got.n == 6


def test_stratified_interval_matches_exact_enumeration() -> None:
    strata = [[0.0, 1.0, 1.0], [0.2, 0.0, 0.5, 1.0]]
    exact = exact_percentiles(strata)
    got = bootstrap_ci(strata, resamples=200_000, seed=2)
    assert got.estimate == pytest.approx((2 / 3 + 0.425) / 2)
    assert got.low == pytest.approx(exact[0], abs=0.01)
    assert got.high == pytest.approx(exact[1], abs=0.01)


def test_seeded_and_paired() -> None:
    assert mean_ci([0, 1, 1, 0, 1], seed=5) == mean_ci([0, 1, 1, 0, 1], seed=5)
    base = {f"t{i}": 0.0 for i in range(40)}
    better = {f"t{i}": 1.0 if i % 4 else 0.0 for i in range(40)} | {"only-here": 1.0}
    diff = paired_ci([better], [base], seed=0)
    assert diff.n == 40  # the task only one side played is left out, not scored 0
    assert diff.estimate == pytest.approx(0.75)
    assert diff.excludes_zero() and diff.low > 0.55
    same = paired_ci([base], [dict(base)], seed=0)
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero()


def test_repeats_are_averaged_per_task_and_empty_is_an_error() -> None:
    assert per_task_means([("a", 1.0), ("a", 0.0), ("b", 1.0)]) == {"a": 0.5, "b": 1.0}
    with pytest.raises(ValueError):
        bootstrap_ci([[], []])
