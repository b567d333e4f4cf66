"""A candidate as a recipe rather than a checkpoint.

Crossover is linear and SVD mutation adds terms along the experts' singular directions, so every candidate is
θ_base + Σ_e U_e diag(g_e) V_eᵀ for each matrix, plus Σ_e c_e τ_e for each 1-D tensor: its genome is the
coefficient vectors g_e (a [K, r] tensor per matrix) and scalars c_e (a [K] tensor per vector). The Gaussian
ablation's noise stays exact too: a list of (seed, scale) terms, the noise being regenerated from its seed.

Genomes are values: operators build new ones and never change a genome's tensors in place (unchanged tensors
are shared between parent and child, which is what keeps a generation cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

if TYPE_CHECKING:
    from cycleqd.evolver.svd_cache import SVDCache

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class GenomeError(ValueError):
    """A genome file is missing or unreadable, or genomes that do not fit together were combined."""


class GenomeNotFoundError(GenomeError):
    """No genome file with that hash in that directory."""


class GenomeCorruptError(GenomeError):
    """A genome file that cannot be read, or whose content no longer matches the hash it is named by."""


@dataclass(frozen=True, eq=False)
class Genome:
    coefficients: dict[str, torch.Tensor]
    noise: tuple[tuple[int, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.coefficients:
            raise GenomeError("a genome needs coefficients for at least one tensor")
        experts = None
        for name, tensor in self.coefficients.items():
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32 or tensor.device.type != "cpu":
                raise GenomeError(f"coefficients of {name} must be a float32 CPU tensor, got {_describe(tensor)}")
            if tensor.ndim not in (1, 2):
                raise GenomeError(f"coefficients of {name} must be [K, r] (matrix) or [K] (vector), got "
                                  f"{list(tensor.shape)}")  # fmt: skip
            if experts is None:
                experts = tensor.shape[0]
            elif tensor.shape[0] != experts:
                raise GenomeError(f"coefficients of {name} are for {tensor.shape[0]} experts, others for {experts}")
        # Canonical noise: one term per seed (the same seed is the same noise, so scales add), sorted, no zeros.
        scales: dict[int, float] = {}
        for seed, scale in self.noise:
            scales[int(seed)] = scales.get(int(seed), 0.0) + float(scale)
        object.__setattr__(self, "noise", tuple(sorted((s, v) for s, v in scales.items() if v != 0.0)))

    @property
    def experts(self) -> int:
        """K, the number of experts the coefficients refer to."""
        return next(iter(self.coefficients.values())).shape[0]

    @classmethod
    def expert(cls, cache: SVDCache, k: int) -> Genome:
        """Expert k itself: g_k = σ_k, c_k = 1, every other expert's coefficients 0."""
        if not 0 <= k < cache.experts:
            raise GenomeError(f"expert {k} does not exist: the cache has experts 0..{cache.experts - 1}")
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
            raise GenomeError("genomes of different checkpoints cannot be combined (their tensor names differ)")
        for name in names:
            shapes = {tuple(g.coefficients[name].shape) for g in genomes}
            if len(shapes) > 1:
                raise GenomeError(f"genomes disagree on the shape of {name}'s coefficients: {sorted(shapes)}")
        coefficients = {name: sum(float(w) * g.coefficients[name] for g, w in zip(genomes, weights, strict=True))
                        for name in names}  # fmt: skip
        noise = [
            (seed, float(weight) * scale) for g, weight in zip(genomes, weights, strict=True) for seed, scale in g.noise
        ]
        return cls(coefficients, tuple(noise))  # type: ignore[arg-type]

    def content_hash(self) -> str:
        """sha256 (hex) over the sorted names, shapes, fp32 bytes and noise terms; the same in every process."""
        digest = hashlib.sha256()
        for name in sorted(self.coefficients):
            tensor = self.coefficients[name].contiguous()
            digest.update(f"{name}:{list(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
        digest.update(json.dumps([list(term) for term in self.noise]).encode())
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Genome):
            return NotImplemented
        return (self.noise == other.noise and self.coefficients.keys() == other.coefficients.keys()
                and all(torch.equal(t, other.coefficients[n]) for n, t in self.coefficients.items()))  # fmt: skip

    def __hash__(self) -> int:
        return hash(self.content_hash())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.coefficients.values())

    def save(self, directory: Path) -> str:
        """Write `<hash>.safetensors` under `directory` (once; atomically, durably) and return the hash."""
        directory = Path(directory)
        digest = self.content_hash()
        path = directory / f"{digest}.safetensors"
        if not path.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            temporary = directory / f".{digest}.{uuid.uuid4().hex}.writing"  # concurrent savers never collide
            tensors = {name: t.contiguous() for name, t in self.coefficients.items()}
            try:
                save_file(tensors, temporary, metadata={"noise": json.dumps([list(term) for term in self.noise])})
                with open(temporary, "rb+") as f:
                    os.fsync(f.fileno())  # the run's record points at this file: it must survive a crash
                temporary.replace(path)
            finally:
                temporary.unlink(missing_ok=True)
        return digest

    @classmethod
    def load(cls, directory: Path, digest: str) -> Genome:
        """The genome saved as `<digest>.safetensors` in `directory`, checked against its hash."""
        if not _DIGEST.match(digest):
            raise GenomeError(f"{digest!r} is not a genome hash (64 lowercase hex digits)")
        path = Path(directory) / f"{digest}.safetensors"
        if not path.is_file():
            raise GenomeNotFoundError(f"genome {digest} is not in {directory} (saved under another cache folder?)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                noise = json.loads((handle.metadata() or {}).get("noise", "[]"))
                coefficients = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118
            genome = cls(coefficients, tuple((int(seed), float(scale)) for seed, scale in noise))
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise GenomeCorruptError(f"{path}: unreadable genome ({exc}); delete it and rerun") from None
        if genome.content_hash() != digest:
            raise GenomeCorruptError(f"{path}: content does not match its hash (corrupted on disk?)")
        return genome


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} on {value.device}"
    return type(value).__name__
