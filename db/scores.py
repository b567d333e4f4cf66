"""The mean score of a group of episodes, one rule for every view of it (the aggregates an eval stores, `cycleqd
show`, the monitor): an episode an environment error left without a score counts as an error, never as a 0, and a
group with no scored episode has no mean (None), not a mean of 0. It lives in db/, which imports nothing from
outside itself, so that the monitor's queries and the application share it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreTally:
    """Episodes, how many of them were scored and the sum of their scores. Tallies add up, so a query may sum
    partial groups (e.g. per status) in SQL and the mean still comes from here."""

    episodes: int = 0
    scored: int = 0
    total: float = 0.0

    @classmethod
    def of(cls, scores: Iterable[float | None]) -> ScoreTally:
        """The tally of episodes' scores, None for an episode that was not scored."""
        listed = list(scores)
        scored = [s for s in listed if s is not None]
        return cls(len(listed), len(scored), sum(scored))

    def __add__(self, other: ScoreTally) -> ScoreTally:
        return ScoreTally(self.episodes + other.episodes, self.scored + other.scored, self.total + other.total)

    @property
    def errors(self) -> int:
        return self.episodes - self.scored

    @property
    def mean(self) -> float | None:
        return self.total / self.scored if self.scored else None
