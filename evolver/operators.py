"""CycleQD's variation operators and merges, all acting on genomes.

- crossover: child τ = (ω1 τ_p1 + ω2 τ_p2) / (ω1 + ω2), ω ~ N(μ, σ²) per parent (model-wise linear merge);
- SVD mutation: for every matrix, + U_q diag(w ⊙ σ_q) V_qᵀ with w ~ Uniform[0, w_max]^r, U Σ Vᵀ the SVD of the
  active task's expert task vector; in a genome that is adding w ⊙ σ_q to g_q. Norm vectors are not mutated;
- Gaussian mutation (ablation): + N(0, std²) on every weight, kept as a (seed, std) term;
- the naive merge (mean of the experts' task vectors) and the final softmax merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cycleqd.evolver.genome import Genome, GenomeError
from cycleqd.evolver.svd_cache import SVDCache


def draw_omegas(rng: np.random.Generator, mu: float, sigma: float) -> tuple[float, float]:
    """ω1, ω2 ~ N(μ, σ²): one scalar weight per parent."""
    first, second = rng.normal(mu, sigma, size=2)
    return float(first), float(second)


def crossover(first: Genome, second: Genome, w1: float, w2: float) -> Genome:
    """(w1·first + w2·second) / (w1 + w2): the model-wise linear merge of the parents' task vectors."""
    total = w1 + w2
    if abs(total) <= 1e-9 * max(abs(w1), abs(w2), 1e-300):
        raise GenomeError(f"crossover weights {w1} and {w2} sum to {total}: the merge would divide by ~zero")
    return Genome.combine([first, second], [w1 / total, w2 / total])


def mutation_draws(cache: SVDCache, w_max: float, seed: int) -> dict[str, torch.Tensor]:
    """w for every matrix, drawn in sorted name order from one generator: the same seed, the same w."""
    if not w_max >= 0:
        raise GenomeError(f"w_max must be ≥ 0, got {w_max}")
    generator = torch.Generator().manual_seed(seed % 2**64)  # any int; torch takes 64 bits
    return {name: torch.rand(cache.rank(name), generator=generator) * w_max for name in cache.matrix_names}


def svd_mutation(genome: Genome, cache: SVDCache, k: int, w_max: float, seed: int) -> Genome:
    """Add w ⊙ σ_k to g_k of every matrix: exactly + U_k diag(w ⊙ σ_k) V_kᵀ on its weights. Vectors untouched."""
    if not 0 <= k < cache.experts or genome.experts != cache.experts:
        raise GenomeError(f"mutation along expert {k}: the cache has {cache.experts} experts, the genome "
                          f"{genome.experts}")  # fmt: skip
    missing = [name for name in cache.matrix_names if name not in genome.coefficients]
    if missing:
        raise GenomeError(f"the genome has no coefficients for {missing[0]}: it belongs to another base")
    coefficients = dict(genome.coefficients)
    for name, w in mutation_draws(cache, w_max, seed).items():
        rows = coefficients[name].clone()
        rows[k] += w * cache.sigma(k, name)
        coefficients[name] = rows
    return Genome(coefficients, genome.noise)


def gaussian_mutation(genome: Genome, std: float, seed: int) -> Genome:
    """+ N(0, std²) on every weight (the ablation), kept exact as a (seed, std) term regenerated when
    materialised."""
    return Genome(dict(genome.coefficients), tuple(sorted((*genome.noise, (seed, std)))))


def average_merge(cache: SVDCache) -> Genome:
    """θ_base + mean of the experts' task vectors."""
    experts = [Genome.expert(cache, k) for k in range(cache.experts)]
    return Genome.combine(experts, [1.0 / len(experts)] * len(experts))


def softmax_merge(genomes: Sequence[Genome], qualities: Sequence[float]) -> Genome:
    """Σ_k softmax(f)_k · genome_k: the paper's final model over the archives' best elites."""
    if not genomes or len(genomes) != len(qualities):
        raise GenomeError(f"softmax merge needs one quality per genome: {len(genomes)} genomes, {len(qualities)}")
    weights = torch.softmax(torch.tensor(list(qualities), dtype=torch.float64), dim=0).tolist()
    return Genome.combine(genomes, weights)
