"""Racing: stop scoring a child once it provably cannot enter any archive.

A task's score is the mean of its scored episodes, each in [0, 1]. After some of a child's episodes the final
mean is bounded: every unplayed episode may still score anything in that range (or end in an environment error,
which the mean leaves out: an error is unknown, never a 0). Per archive, the bounds of the BC tasks give a box of
cells the child can still land in, and the bound of the quality task the best quality it can still reach. The
archive can still take the child when a cell of that box is empty or holds an elite of lower quality (insertion
needs *strictly* better). When no archive can, the child's remaining episodes cannot change any archive: it is
rejected early.

Why this is exact: archives only get better (a filled cell stays filled, its quality never drops). A child no
archive can take against a snapshot taken when its race started is refused by the archives as they stand at its
insertion too, whatever was inserted in between. So in synchronous mode a run with racing inserts exactly what a
run without it inserts; only the rejected children's scores stay unknown (their bounds are recorded instead), and
nothing downstream may read those.

`hoeffding` is a statistical, *inexact* variant: the unplayed episodes' mean is taken to lie within Hoeffding's
ε of the observed mean (two-sided, union over the tasks, confidence 1 − δ per check). It saves more episodes and
can wrongly reject a child that would have entered an archive.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from cycleqd.evolver.archive import GridArchive
from cycleqd.evolver.kinds import RacingKind

SCORE_RANGE = (0.0, 1.0)  # every environment scores an episode within this range
MARGIN = 1e-9  # bounds are widened by this much, so that float rounding of the final mean can never escape them
KINDS = tuple(RacingKind)


@dataclass
class TaskTally:
    """What one task's episodes have shown so far."""

    planned: int
    scores: list[float] = field(default_factory=list)
    errors: int = 0  # episodes an environment error left unscored
    started: int = 0  # episodes handed out to play (finished ones included)

    @property
    def played(self) -> int:
        return len(self.scores) + self.errors

    def mean(self) -> float:
        """The final score, once every episode is played: the mean over scored episodes (0 when none scored)."""
        return math.fsum(self.scores) / len(self.scores) if self.scores else 0.0


def mean_bounds(
    tally: TaskTally, kind: str = RacingKind.EXACT, delta: float = 0.05, tasks: int = 1
) -> tuple[float, float]:
    """The lowest and highest final mean this task can still reach (widened by MARGIN).

    The final mean leaves environment errors out, so each unplayed episode either joins the mean with a score in
    the range or (an error) does not join it; the extremes are every unplayed episode scoring the range's end.
    An episode already ended in an error tells nothing: it is neither a 0 nor part of the denominator.
    """
    low, high = SCORE_RANGE
    total, scored = math.fsum(tally.scores), len(tally.scores)
    unplayed = tally.planned - tally.played
    fill_low, fill_high = low, high
    if kind == RacingKind.HOEFFDING and scored and unplayed:
        observed = total / scored
        epsilon = (high - low) * math.sqrt(math.log(2 * tasks / delta) / (2 * scored))
        fill_low, fill_high = max(low, observed - epsilon), min(high, observed + epsilon)
    if scored + unplayed == 0:
        lo = hi = 0.0  # nothing scored and nothing left: the score is 0
    else:
        lo = (total + unplayed * fill_low) / (scored + unplayed)
        hi = (total + unplayed * fill_high) / (scored + unplayed)
        if not scored:  # every remaining episode may still end in an environment error: the score would be 0
            lo, hi = min(lo, 0.0), max(hi, 0.0)
    return lo - MARGIN, hi + MARGIN


class ArchiveView:
    """A snapshot of one archive as a quality grid (-inf where empty: an empty cell takes any quality), for fast
    box queries."""

    def __init__(self, archive: GridArchive) -> None:
        self.archive = archive
        self.grid = np.full((archive.bins,) * len(archive.bc_indices), -np.inf)
        for cell, elite in archive.elites.items():
            self.grid[cell] = archive.quality(elite.scores)

    def box(self, bounds: Sequence[tuple[float, float]]) -> tuple[tuple[int, int], ...]:
        """Per BC, the first and last bin the child can still land in (binning is monotone, so bins in between
        are reachable too)."""
        archive = self.archive
        return tuple(
            (archive.bin_of(j, bounds[i][0]), archive.bin_of(j, bounds[i][1])) for j, i in enumerate(archive.bc_indices)
        )

    def slack(self, bounds: Sequence[tuple[float, float]]) -> float:
        """How far the child's best reachable quality is above the weakest elite of its box: > 0 while the archive
        can still take it (+inf when a reachable cell is empty), ≤ 0 once it cannot."""
        weakest = float(self.grid[tuple(slice(first, last + 1) for first, last in self.box(bounds))].min())
        return bounds[self.archive.task_index][1] - weakest


class Race:
    """One child's race against the archives as they stood when it started.

    The evaluator calls `plan` with the episodes per task, then `observe` after every finished episode (and for
    every episode a previous process already stored), asks `start_next` which task to start next, and stops as
    soon as `rejected` is true.
    """

    def __init__(self, archives: Sequence[GridArchive], kind: str = RacingKind.EXACT, delta: float = 0.05) -> None:
        if kind not in KINDS:
            raise ValueError(f"racing kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.kind = kind
        self.delta = delta
        self.views = [ArchiveView(a) for a in archives]
        self.tallies: list[TaskTally] = []
        self._slacks: list[float] | None = None

    def plan(self, planned: Sequence[int]) -> None:
        self.tallies = [TaskTally(n) for n in planned]
        self._slacks = None

    def observe(self, task: int, score: float | None) -> None:
        """One finished episode of `task`; None for an environment error."""
        tally = self.tallies[task]
        if tally.played >= tally.planned:
            raise ValueError(f"task {task}: more episodes observed than the {tally.planned} planned")
        if score is None:
            tally.errors += 1
        else:
            low, high = SCORE_RANGE
            if not low <= score <= high:
                raise ValueError(f"task {task}: episode score {score} outside the score range {SCORE_RANGE}")
            tally.scores.append(float(score))
        tally.started = max(tally.started, tally.played)  # an earlier process may have played some
        self._slacks = None

    @property
    def played(self) -> int:
        return sum(t.played for t in self.tallies)

    @property
    def planned(self) -> int:
        return sum(t.planned for t in self.tallies)

    def bounds(self) -> list[tuple[float, float]]:
        return [mean_bounds(t, self.kind, self.delta, len(self.tallies)) for t in self.tallies]

    def slacks(self) -> list[float]:
        if self._slacks is None:
            bounds = self.bounds()
            self._slacks = [view.slack(bounds) for view in self.views]
        return self._slacks

    @property
    def rejected(self) -> bool:
        """No archive can take the child any more, and some of its episodes are still unplayed."""
        if self.kind == RacingKind.OFF or not self.tallies or self.played >= self.planned:
            return False
        return all(s <= 0 for s in self.slacks())  # cached until the next episode: start_next reads them too

    def start_next(self, available: Collection[int]) -> int:
        """Which task to start an episode of next, among those with episodes left to start; counted as started.

        Least slack first: an archive whose reachable box holds an empty cell can only close by narrowing the box,
        so its BC tasks come first; otherwise the quality task of the open archive nearest to closing (its slack
        counted in episodes of that task). Ties, and tasks no open archive waits on, go to the task with the
        largest share of its episodes not yet started, which interleaves the tasks.
        """
        if not available:
            raise ValueError("no task has an episode left to start")
        urgency = [math.inf] * len(self.tallies)
        if self.kind != "off":
            for view, slack in zip(self.views, self.slacks(), strict=True):
                if slack <= 0:
                    continue
                if math.isinf(slack):
                    for i in view.archive.bc_indices:
                        urgency[i] = min(urgency[i], 0.0)
                else:
                    q = view.archive.task_index
                    urgency[q] = min(urgency[q], slack * self.tallies[q].planned)

        def key(task: int) -> tuple[float, float, int]:
            tally = self.tallies[task]
            return urgency[task], tally.started / tally.planned if tally.planned else 1.0, task

        chosen = min(available, key=key)
        self.tallies[chosen].started += 1
        return chosen

    def record(self) -> dict[str, object]:
        """What the store keeps of a race: bounds per task, episodes played and planned."""
        return {"kind": self.kind, "bounds": [list(b) for b in self.bounds()], "played": self.played,
                "planned": self.planned}  # fmt: skip


def rejects(archives: Sequence[GridArchive], bounds: Sequence[Sequence[float]]) -> bool:
    """No archive can take a child whose per-task scores lie within `bounds`."""
    pairs = [(float(lo), float(hi)) for lo, hi in bounds]
    return all(ArchiveView(a).slack(pairs) <= 0 for a in archives)


def early_rejection_records(archives: Sequence[GridArchive], bounds: Sequence[Sequence[float]]) -> list[dict]:
    """What each archive did with a child rejected early: its reachable box and best reachable quality."""
    pairs = [(float(lo), float(hi)) for lo, hi in bounds]
    return [{"archive": a.name, "status": "rejected_early", "box": [list(b) for b in ArchiveView(a).box(pairs)],
             "best_reachable": pairs[a.task_index][1]} for a in archives]  # fmt: skip
