"""The evolution's named choices, as the config reads them and the pieces that act on them compare them. StrEnums:
each member equals its string, so a stored config (JSON) reads back equal."""

from __future__ import annotations

from enum import StrEnum


class SamplerKind(StrEnum):
    """Parent sampling (evolver/sampling.py): the paper's elite weights γ, or uniform (an ablation)."""

    ELITE = "elite"
    UNIFORM = "uniform"


class MutationKind(StrEnum):
    """A child's mutation (evolver/operators.py)."""

    SVD = "svd"
    GAUSSIAN = "gaussian"
    NONE = "none"


class RacingKind(StrEnum):
    """evolver/racing.py: `exact` changes no archive; `hoeffding` is statistical and inexact; `off` plays all."""

    EXACT = "exact"
    HOEFFDING = "hoeffding"
    OFF = "off"


class Server(StrEnum):
    """The serving engine: auto (serving/resolve.py `engine_for`), vllm, transformers."""

    AUTO = "auto"
    VLLM = "vllm"
    TRANSFORMERS = "transformers"
