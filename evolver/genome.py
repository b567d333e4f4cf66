"""A candidate as a recipe rather than a checkpoint.

Crossover is linear and SVD mutation adds terms along the experts' singular directions, so every candidate is
θ_base + Σ_e U_e diag(g_e) V_eᵀ for each matrix, plus Σ_e c_e τ_e for each 1-D tensor: its genome is the
coefficient vectors g_e (a [K, r] tensor per matrix) and scalars c_e (a [K] tensor per vector). The Gaussian
ablation's noise stays exact too: a list of (seed, scale) terms, the noise being regenerated from its seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from evolver.svd_cache import SVDCache


class GenomeError(ValueError):
    """A genome file is missing or unreadable, or genomes that do not fit together were combined."""


@dataclass(frozen=True)
class Genome:
    coefficients: dict[str, torch.Tensor]
    noise: tuple[tuple[int, float], ...] = field(default=())

    @classmethod
    def expert(cls, cache: SVDCache, k: int) -> Genome:
        """Expert k itself: g_k = σ_k, c_k = 1, every other expert's coefficients 0."""
        coefficients = {}
        for name in cache.matrix_names:
            rows = torch.zeros(cache.experts, cache.rank(name))
            rows[k] = cache.sigma(k, name)
            coefficients[name] = rows
        for name in cache.vector_names:
            scalars = torch.zeros(cache.experts)
            scalars[k] = 1.0
            coefficients[name] = scalars
        return cls(coefficients)

    @classmethod
    def combine(cls, genomes: Sequence[Genome], weights: Sequence[float]) -> Genome:
        """Σ w_i · genome_i: the weights' task vectors combined with the same weights."""
        if not genomes or len(genomes) != len(weights):
            raise GenomeError(f"combine needs one weight per genome: {len(genomes)} genomes, {len(weights)} weights")
        names = genomes[0].coefficients.keys()
        if any(g.coefficients.keys() != names for g in genomes):
            raise GenomeError("genomes of different checkpoints cannot be combined")
        coefficients = {name: sum(float(w) * g.coefficients[name] for g, w in zip(genomes, weights, strict=True))
                        for name in names}  # fmt: skip
        scales: dict[int, float] = {}
        for genome, weight in zip(genomes, weights, strict=True):
            for seed, scale in genome.noise:
                scales[seed] = scales.get(seed, 0.0) + float(weight) * scale
        noise = tuple(sorted((seed, scale) for seed, scale in scales.items() if scale != 0.0))
        return cls(coefficients, noise)  # type: ignore[arg-type]

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.coefficients):
            tensor = self.coefficients[name].to(torch.float32).contiguous()
            digest.update(f"{name}:{list(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
        digest.update(json.dumps([list(term) for term in self.noise]).encode())
        return digest.hexdigest()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.coefficients.values())

    def save(self, directory: Path) -> str:
        """Write `<hash>.safetensors` under `directory` (once; atomically) and return the hash."""
        digest = self.content_hash()
        path = directory / f"{digest}.safetensors"
        if not path.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            temporary = directory / f".{digest}.writing"
            tensors = {name: t.to(torch.float32).contiguous() for name, t in self.coefficients.items()}
            save_file(tensors, temporary, metadata={"noise": json.dumps([list(term) for term in self.noise])})
            temporary.replace(path)
        return digest

    @classmethod
    def load(cls, directory: Path, digest: str) -> Genome:
        path = directory / f"{digest}.safetensors"
        if not path.is_file():
            raise GenomeError(f"genome {digest} is not in {directory}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                noise = json.loads((handle.metadata() or {}).get("noise", "[]"))
            coefficients = load_file(path)
        except (SafetensorError, OSError, json.JSONDecodeError) as exc:
            raise GenomeError(f"{path}: unreadable genome ({exc})") from None
        return cls(coefficients, tuple((int(seed), float(scale)) for seed, scale in noise))
