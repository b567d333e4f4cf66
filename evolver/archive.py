"""The MAP-Elites archive of one task: quality is that task's score, the behaviour characteristics (BCs) are
the other tasks' scores, each binned evenly over its range (values outside are clamped to the end bins).

Insertion reports what happened, so the loop can log it and the TUI show it: a new cell, an improved elite
(quality strictly higher), or a rejection.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


class AddStatus(enum.IntEnum):
    """Ordered like its usefulness, and a bool: `if status:` means the archive changed."""

    REJECTED = 0
    IMPROVED = 1
    NEW = 2


@dataclass(frozen=True)
class Elite:
    candidate_id: int
    genome_hash: str
    scores: tuple[float, ...]  # one per task, in task order


@dataclass(frozen=True)
class Insertion:
    archive: str
    cell: tuple[int, ...]
    status: AddStatus
    old_quality: float | None
    new_quality: float

    def as_record(self) -> dict[str, object]:
        return {"archive": self.archive, "cell": cell_key(self.cell), "status": self.status.name.lower(),
                "old": self.old_quality, "new": self.new_quality}  # fmt: skip


def cell_key(cell: tuple[int, ...]) -> str:
    return ",".join(map(str, cell))


def parse_cell_key(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split(",")) if key else ()


def paper_bc_range(expert_scores: Sequence[float]) -> tuple[float, float]:
    """85% of the weakest expert's score to 115% of the strongest's (the paper's rule).

    When every expert scores the same (typically 0 for small models), that range is empty; it is widened to the
    whole score scale [0, 1] so that the archive still has bins to fill.
    """
    lo, hi = 0.85 * min(expert_scores), 1.15 * max(expert_scores)
    if hi - lo < 1e-9:
        return 0.0, 1.0
    return lo, hi


@dataclass
class GridArchive:
    """Archive of task `task_index` among `task_names`; `ranges[j]` is the [lo, hi] of the j-th BC task."""

    task_index: int
    task_names: tuple[str, ...]
    bins: int
    ranges: tuple[tuple[float, float], ...]
    elites: dict[tuple[int, ...], Elite] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"an archive needs at least one bin per BC, not {self.bins}")
        if len(self.ranges) != len(self.bc_indices):
            raise ValueError(f"archive {self.name}: {len(self.bc_indices)} BCs but {len(self.ranges)} ranges")
        for (lo, hi), name in zip(self.ranges, self.bc_names, strict=True):
            if not hi > lo:
                raise ValueError(f"archive {self.name}: BC range of {name} is empty ({lo} to {hi})")

    @property
    def name(self) -> str:
        return self.task_names[self.task_index]

    @property
    def bc_indices(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.task_names)) if i != self.task_index)

    @property
    def bc_names(self) -> tuple[str, ...]:
        return tuple(self.task_names[i] for i in self.bc_indices)

    @property
    def cells_total(self) -> int:
        return self.bins ** len(self.bc_indices)

    def quality(self, scores: Sequence[float]) -> float:
        return scores[self.task_index]

    def cell_of(self, scores: Sequence[float]) -> tuple[int, ...]:
        return tuple(self.bin_of(j, scores[i]) for j, i in enumerate(self.bc_indices))

    def bin_of(self, bc: int, value: float) -> int:
        """The bin of the `bc`-th BC that `value` falls in; monotone in `value` (outside values clamp to the ends)."""
        lo, hi = self.ranges[bc]
        position = math.floor((value - lo) / (hi - lo) * self.bins)
        return min(max(position, 0), self.bins - 1)

    def offer(self, elite: Elite) -> Insertion:
        """Take the cell when it is empty or the candidate's quality is strictly higher than its elite's."""
        cell = self.cell_of(elite.scores)
        quality = self.quality(elite.scores)
        current = self.elites.get(cell)
        if current is None:
            self.elites[cell] = elite
            return Insertion(self.name, cell, AddStatus.NEW, None, quality)
        old = self.quality(current.scores)
        if quality > old:
            self.elites[cell] = elite
            return Insertion(self.name, cell, AddStatus.IMPROVED, old, quality)
        return Insertion(self.name, cell, AddStatus.REJECTED, old, quality)

    def best(self, expert: Elite | None = None, seed: int = 0) -> Elite | None:
        """The elite of highest quality. Ties (equal quality, common with few selection tasks) are broken by a
        stated rule, not by candidate order, which once handed a tied archive to another task's expert:
        1. this archive's own expert (`expert`), so a task whose children all tie with it keeps its skill; it counts
           even when it holds no cell (an expert that tied an earlier elite's quality in its cell was not inserted);
        2. the higher mean score over the other tasks (the elite that costs the final merge least elsewhere);
        3. a draw seeded by (`seed`, archive name, the tied ids): reproducible, and independent of id order.
        """
        if not self.elites:
            return None
        top = max(self.quality(e.scores) for e in self.elites.values())
        if expert is not None and self.quality(expert.scores) == top:
            return expert
        tied = sorted((e for e in self.elites.values() if self.quality(e.scores) == top), key=lambda e: e.candidate_id)
        elsewhere = max(self._mean_elsewhere(e) for e in tied)
        tied = [e for e in tied if self._mean_elsewhere(e) == elsewhere]
        if len(tied) == 1:
            return tied[0]
        words = [str(seed), self.name, *(str(e.candidate_id) for e in tied)]
        draw = int.from_bytes(hashlib.sha256("\0".join(words).encode()).digest()[:8], "big")
        return tied[draw % len(tied)]

    def _mean_elsewhere(self, elite: Elite) -> float:
        return math.fsum(elite.scores[i] for i in self.bc_indices) / max(1, len(self.bc_indices))

    def ordered_elites(self) -> list[Elite]:
        """Elites in cell order: sampling over this list is reproducible whatever the insertion history."""
        return [self.elites[cell] for cell in sorted(self.elites)]
