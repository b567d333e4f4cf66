"""The power line's arithmetic (cycleqd/results/power.py): checked against a simulated paired test, not against
its own formula."""

from __future__ import annotations

import math
import random

import pytest

from cycleqd.results.power import discordance, resolvable_difference, tasks_to_resolve


def simulated_power(discordance_rate: float, difference: float, n: int, trials: int, seed: int) -> float:
    """How often McNemar's test (normal approximation, two-sided 5%) finds a above b when, per task, the two
    disagree with probability `discordance_rate` and a wins a disagreement often enough for a true `difference`."""
    rng = random.Random(seed)
    a_wins = (discordance_rate + difference) / (2 * discordance_rate)
    found = 0
    for _ in range(trials):
        b = c = 0
        for _ in range(n):
            if rng.random() < discordance_rate:
                if rng.random() < a_wins:
                    b += 1
                else:
                    c += 1
        found += b + c > 0 and (b - c) / math.sqrt(b + c) > 1.959964
    return found / trials


@pytest.mark.parametrize(("q", "n"), [(0.12, 240), (0.22, 80)])
def test_a_split_finds_its_resolvable_difference_four_times_in_five(q: float, n: int) -> None:
    d = resolvable_difference(q, n)
    # at least 80% (within the simulation's ±0.02), and a little more: the spread of b − c under the difference is
    # n(q − d²), below the n·q the formula takes, so the line errs on the side of promising less
    assert 0.78 <= simulated_power(q, d, n, trials=2000, seed=1) <= 0.88
    assert simulated_power(q, d / 2, n, trials=2000, seed=2) < 0.4  # half of it is mostly missed


def test_tasks_to_resolve_is_the_smallest_split_that_resolves_the_difference() -> None:
    for q, d in [(0.12, 0.03), (0.22, 0.1), (0.5, 0.2)]:
        n = tasks_to_resolve(q, d)
        assert resolvable_difference(q, n) <= d < resolvable_difference(q, n - 1)
    assert tasks_to_resolve(0.12, 0.03) == 1047  # the README's measured effects need about 350 per environment


def test_discordance_pairs_tasks_by_key_within_each_environment() -> None:
    a = [{"t1": 1.0, "t2": 0.0, "t3": 1.0}, {"t1": 0.0}]
    b = [{"t1": 1.0, "t2": 1.0, "t4": 0.0}, {"t1": 1.0, "t9": 1.0}]
    assert discordance(a, b) == (2 / 3, 3)  # t3, t4 and t9 have no pair; "t1" of each environment is its own
    assert discordance([{}], [{"x": 1.0}]) == (0.0, 0)


def test_impossible_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="n ≥ 1"):
        resolvable_difference(0.2, 0)
    with pytest.raises(ValueError, match="discordance in"):
        resolvable_difference(1.5, 10)
    with pytest.raises(ValueError, match="above 0"):
        tasks_to_resolve(0.2, 0)
