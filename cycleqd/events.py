"""What a run tells its caller while it goes (the `on_event` of `cycleqd.evaluate` and `cycleqd.evolve`): small frozen
values, so that the CLI's live view and a notebook's callback read the same things."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable

    from cycleqd.eval.orchestrator import EpisodeResult, EpisodeRound
    from cycleqd.evolution.loop import EvolutionEvent


@dataclass(frozen=True)
class RunOpened:
    """The run's row exists in the store from now on: a failure or Ctrl-C from here leaves it resumable."""

    run_id: str
    resumed: bool
    done: int = 0  # an evolution: its committed generations (generation 0: the experts); an eval: stored episodes
    planned: int | None = None  # an evolution: its generations
    # The run's time so far (db/run_time.py: its sessions, this one just begun), from which a live view counts on.
    elapsed_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class EpisodesPlanned:
    """How many episodes this invocation plays (a resumed run: only those it has not stored)."""

    episodes: int


@dataclass(frozen=True)
class Stage:
    """A long step before the first episode (building images, the SVD cache); None: it ended."""

    text: str | None


@dataclass(frozen=True)
class Stopping:
    """A second Ctrl-C or SIGTERM while the first one's cancellation releases sandboxes and servers."""


# EpisodeRound: an episode in flight (as it begins, then after each model reply); its EpisodeResult ends it.
EvalEvent: TypeAlias = "RunOpened | EpisodesPlanned | EpisodeRound | EpisodeResult | Stopping"
EvolveEvent: TypeAlias = "RunOpened | Stage | EvolutionEvent | Stopping"
OnEvent: TypeAlias = "Callable[[object], None]"


def ignore(_event: object) -> None:
    """The `on_event` of a caller that only wants the result."""
