"""How small a paired difference a test split can tell from 0, before it is played.

Two models scored pass/fail on the same n tasks differ only on the tasks where exactly one passes; with q the
fraction of such discordant tasks, the mean difference near 0 has a standard error of sqrt(q / n) (the normal
approximation of McNemar's test). A true difference d is declared above 0 by a two-sided test at level α with
probability 1 − β when d ≥ (z₁₋α/₂ + z₁₋β) · sqrt(q / n): that d is what a split of n tasks can resolve, and n
tasks resolve a given d from (z₁₋α/₂ + z₁₋β)² · q / d² on. q comes from a pilot: the paired outcomes of an earlier
run (`discordance`), since it depends on the models and the tasks, not on n.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.05  # two-sided, as the 95% intervals of the tables
POWER = 0.8


def _z_sum(alpha: float, power: float) -> float:
    normal = NormalDist()
    return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)


def resolvable_difference(discordance: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference that `n` paired tasks declare above 0 with probability `power`."""
    if n < 1 or not 0 <= discordance <= 1:
        raise ValueError(f"need n ≥ 1 and a discordance in [0, 1], not n={n}, q={discordance}")
    return _z_sum(alpha, power) * math.sqrt(discordance / n)


def tasks_to_resolve(discordance: float, difference: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """How many paired tasks resolve `difference` (the inverse of `resolvable_difference`)."""
    if difference <= 0:
        raise ValueError(f"a difference to resolve is above 0, not {difference}")
    return math.ceil(_z_sum(alpha, power) ** 2 * discordance / difference**2)


def discordance(a: Sequence[Mapping[object, float]], b: Sequence[Mapping[object, float]]) -> tuple[float, int]:
    """The fraction of tasks (over every stratum, paired by key) on which `a` and `b` scored differently, and the
    number of paired tasks it was measured on."""
    pairs = [(x[key], y[key]) for x, y in zip(a, b, strict=True) for key in x if key in y]
    if not pairs:
        return 0.0, 0
    return sum(1 for s, t in pairs if s != t) / len(pairs), len(pairs)


@dataclass(frozen=True)
class PowerLine:
    """One comparison's power at the planned size: what it compares, its paired tasks, the pilot's discordance."""

    label: str
    n: int
    discordance: float

    @property
    def resolvable(self) -> float:
        return resolvable_difference(self.discordance, self.n)

    def describe(self) -> str:
        return f"{self.label} ±{self.resolvable:.2f} ({self.n} tasks, discordance {self.discordance:.2f})"
