"""The demo's power line, printed with its plan: the smallest difference each comparison of the final table can
tell from 0 at the budget's test sizes (cycleqd.results.power), from the discordance a pilot measured."""

from __future__ import annotations

from dataclasses import dataclass

from cycleqd.envs.registry import names
from cycleqd.results.power import POWER, PowerLine


@dataclass(frozen=True)
class Pilot:
    """Fractions of test tasks on which two models' pass/fail outcomes differ, and where they were measured."""

    source: str
    final_vs_baseline: float
    expert_vs_base: float


# The README's measured default demo: 3 seeds, 25 in-family test tasks per environment (runs 4b66ea380059,
# 328beb989be2, 143f68992b60). Expert − base on its own environment: the base solves none, so each task the expert
# solves is discordant: OS 6, 4, 5 and DB 6, 6, 6 of 25 (coding's expert solves none and is left out). Final − a
# baseline: only the intervals were kept, ±0.10 to ±0.12 on the average of three environments, which Newcombe's
# interval per environment (MOVER over the three) gives for 2 to 5 discordant tasks of 25: 0.08 to 0.20, about 0.12.
README_PILOT = Pilot("the README's measured demo (3 seeds, 25 test tasks per environment)", 0.12, 0.22)


def power_lines(test_limit: int, pilot: Pilot = README_PILOT) -> list[PowerLine]:
    envs = len(names())
    return [PowerLine("final − each baseline (average)", envs * test_limit, pilot.final_vs_baseline),
            PowerLine("each expert − base on its environment", test_limit, pilot.expert_vs_base)]  # fmt: skip


def describe_power(test_limit: int, pilot: Pilot = README_PILOT) -> str:
    lines = "; ".join(line.describe() for line in power_lines(test_limit, pilot))
    return (f"power: a true difference is found above 0 with {POWER:.0%} probability (5% two-sided) from {lines}; "
            f"discordance from {pilot.source}")  # fmt: skip
