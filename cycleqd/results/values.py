"""What `cycleqd.evaluate` and `cycleqd.evolve` return: frozen values naming the run, its scores with their 95%
intervals, and a way to stream its episodes from the store (a large run's episodes never sit in memory)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cycleqd.results.stats import Interval

if TYPE_CHECKING:
    from cycleqd.evolution.loop import FinalRow
    from cycleqd.results.intervals import FinalIntervals


def stored_episodes(db: Path, run_id: str, env: str | None = None) -> Iterator[dict[str, Any]]:
    """The run's episodes as `cycleqd export` writes them: the OpenAI chat messages, the task, score and status."""
    from cycleqd.db.store import EpisodeFilter, open_store
    from cycleqd.results.export import episode_record
    from cycleqd.results.lookup import model_roles

    store = open_store(db, create=False)
    try:
        run = store.get_run(run_id)
        assert run is not None, run_id
        roles = model_roles(store, run)
        for row in store.iter_episodes(run_id, EpisodeFilter(env=env)):
            yield episode_record(run, *row, roles)
    finally:
        store.engine.dispose()


@dataclass(frozen=True)
class EnvScore:
    """One model's mean score on one environment's split, over its scored episodes."""

    model: str  # the model's label (folder or name, and a content-hash prefix for a checkpoint)
    env: str
    split: str
    score: float | None  # None: no episode was scored (cycleqd.db.scores)
    episodes: int
    errors: int  # episodes the environment could not score (they are not in `score`)
    wall_s: float
    interval: Interval | None  # 95% bootstrap interval over tasks; None with no scored task
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the environment's own (DB: per-category accuracy)
    # How the episodes ended (episode status → count), where the reader counted them (the monitor's live table)
    statuses: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env, "split": self.split, "score": self.score, "episodes": self.episodes,
            "errors": self.errors, "wall_s": round(self.wall_s, 1), "metrics": dict(self.metrics),
            "ci95": self.interval.to_json() if self.interval else None,
        }  # fmt: skip


@dataclass(frozen=True)
class EvalResult:
    """A finished evaluation: every planned episode is in the store at `db`."""

    run_id: str
    db: Path
    scores: tuple[EnvScore, ...]
    wall_s: float | None = None  # this invocation's time; None when a finished run was only read back

    def score(self, env: str, split: str | None = None) -> EnvScore:
        """The score of `env` (and `split`, when the run has several); KeyError when the run has none."""
        found = [s for s in self.scores if s.env == env and split in (None, s.split)]
        if len(found) != 1:
            raise KeyError(f"run {self.run_id} has {len(found)} scores for env {env!r} split {split!r}")
        return found[0]

    def episodes(self, env: str | None = None) -> Iterator[dict[str, Any]]:
        return stored_episodes(self.db, self.run_id, env)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run_id, "results": [s.to_json() for s in self.scores]}


@dataclass(frozen=True)
class EvolveResult:
    """A finished evolution: its final table on the held-out test splits (base, experts, naive merge, CycleQD
    final), the intervals of each cell and the paired differences, and the final model's checkpoint folder."""

    run_id: str
    db: Path
    final_model: Path
    table: tuple[FinalRow, ...]
    intervals: FinalIntervals
    tasks: tuple[Any, ...]  # the config's task specs, in the table's column order

    @property
    def final(self) -> FinalRow:
        return next(r for r in self.table if r.kind == "final")

    def episodes(self, env: str | None = None) -> Iterator[dict[str, Any]]:
        return stored_episodes(self.db, self.run_id, env)

    def to_json(self) -> dict[str, Any]:
        from cycleqd.results.intervals import final_intervals_json

        rows = [{"model": r.label, "kind": r.kind, "candidate": r.candidate_id, "scores": r.test_scores,
                 "average": r.average} for r in self.table]  # fmt: skip
        return {"run": self.run_id, "final_model": str(self.final_model), "table": rows,
                "ci95": final_intervals_json(self.intervals, list(self.table))}  # fmt: skip
