"""Parent selection from the active task's archive.

Elite sampling (paper): elite j weighs γ_j = Π_i (α_low + n_{j,i}·(α_high − α_low)) over its quality and each of
its BC values, n being min–max normalisation over the archive's elites (a constant column normalises to 1); two
distinct parents are drawn with p ∝ γ. The reference code's normaliser maps to [0.5, 1.3]; we follow the paper.
Uniform sampling stays available as an ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cycleqd.evolver.archive import Elite, GridArchive
from cycleqd.evolver.kinds import SamplerKind


class NotEnoughElitesError(RuntimeError):
    """Fewer than two distinct elites to choose parents from."""


def min_max_columns(values: np.ndarray) -> np.ndarray:
    """Each column mapped to [0, 1]; a constant column maps to 1."""
    lo, hi = values.min(axis=0), values.max(axis=0)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (values - lo) / safe, 1.0)


def elite_weights(archive: GridArchive, elites: Sequence[Elite], alpha_low: float, alpha_high: float) -> np.ndarray:
    """γ for each elite: quality first, then each BC value, normalised over `elites`."""
    columns = [archive.task_index, *archive.bc_indices]
    values = np.array([[e.scores[i] for i in columns] for e in elites], dtype=np.float64)
    normalised = min_max_columns(values)
    return np.prod(alpha_low + normalised * (alpha_high - alpha_low), axis=1)


def sample_parents(
    archive: GridArchive,
    rng: np.random.Generator,
    *,
    kind: str = SamplerKind.ELITE,
    alpha_low: float = 0.5,
    alpha_high: float = 0.8,
    fallback: Sequence[Elite] = (),
) -> tuple[Elite, Elite]:
    """Two parents with distinct genomes, p ∝ γ (or uniform); the second is drawn without the first.

    When the archive holds fewer than two distinct genomes (early on, experts can share a cell), `fallback`
    (every archive's elites, then the experts) is sampled instead, so that the loop can start; it still weighs by
    this archive's γ.
    """
    elites = _distinct(archive.ordered_elites())
    if len(elites) < 2:
        elites = _distinct([*elites, *fallback])
    if len(elites) < 2:
        raise NotEnoughElitesError(f"archive {archive.name} and the fallback hold {len(elites)} distinct genome(s)")
    if kind == SamplerKind.ELITE:
        weights = elite_weights(archive, elites, alpha_low, alpha_high)
    elif kind == SamplerKind.UNIFORM:
        weights = np.ones(len(elites))
    else:
        raise ValueError(f"unknown sampler {kind!r}: expected 'elite' or 'uniform'")
    first = int(rng.choice(len(elites), p=weights / weights.sum()))
    rest = np.delete(np.arange(len(elites)), first)
    rest_weights = np.delete(weights, first)
    second = int(rng.choice(rest, p=rest_weights / rest_weights.sum()))
    return elites[first], elites[second]


def _distinct(elites: Sequence[Elite]) -> list[Elite]:
    seen: set[str] = set()
    kept = []
    for elite in elites:
        if elite.genome_hash not in seen:
            seen.add(elite.genome_hash)
            kept.append(elite)
    return kept
