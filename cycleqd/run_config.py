"""A run's stored config (`runs.config`) as the views read it back, beside the code that writes its layout.

An eval run stores `EvalRequest.snapshot()` and what the run adds when it opens (`eval_run_config`); an evolution
stores `EvolveConfig.snapshot()`. The views (the monitor, polling) read them leniently: a run stored by an older
version, or a test's fixture, may lack any key, and a view must still show the run. Resuming is not a view: it
rebuilds and validates the whole request (`EvalRequest.from_snapshot`, `EvolveConfig.from_snapshot`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def eval_run_config(request: Mapping[str, Any], planned_episodes: int, planned_envs: Sequence[str],
                    decoding: str) -> dict[str, Any]:  # fmt: skip
    """What an eval run stores as its config: the request (`EvalRequest.snapshot()`), the episodes it plans (the
    monitor's progress total), the environments of its planned tasks (its header: `--task-ids` may pick the tasks
    of fewer environments than the request names) and how its server decodes."""
    return {**request, "planned_episodes": planned_episodes, "planned_envs": list(planned_envs), "decoding": decoding}


def _strings(value: Any) -> tuple[str, ...] | None:
    return tuple(map(str, value)) if isinstance(value, list | tuple) else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class EvalRunConfig:
    """What the views read of an eval run's config; None where the stored config does not say."""

    model: str | None = None
    split: str | None = None
    tasks: tuple[str, ...] | None = None
    task_ids: tuple[str, ...] | None = None
    limit: int | None = None
    repeats: int | None = 1
    planned_episodes: int | None = None
    planned_envs: tuple[str, ...] | None = None

    @classmethod
    def read(cls, config: Mapping[str, Any]) -> EvalRunConfig:
        model, split = config.get("model"), config.get("split")
        return cls(
            model=model if isinstance(model, str) else None,
            split=split if isinstance(split, str) else None,
            tasks=_strings(config.get("tasks")),
            task_ids=_strings(config.get("task_ids")),
            limit=_whole(config.get("limit")),
            repeats=_whole(config.get("repeats", 1)),
            planned_episodes=_whole(config.get("planned_episodes")),
            planned_envs=_strings(config.get("planned_envs")),
        )

    def planned(self) -> tuple[int | None, bool]:
        """Episodes planned, and whether that is only an upper bound (a run stored before `planned_episodes`:
        `--limit` caps the tasks per environment, and a suite may have fewer); None where nothing says."""
        if self.planned_episodes is not None:
            return self.planned_episodes, False
        if self.limit is not None and self.repeats is not None and self.tasks is not None:
            return self.limit * len(self.tasks) * self.repeats, True
        return None, False

    def environments(self) -> tuple[str, ...]:
        """The environments of its planned tasks. An older run's request names every environment of the suite,
        even where `--task-ids` picked tasks of one, so there none is known from the config."""
        if self.planned_envs is not None:
            return self.planned_envs
        return () if self.task_ids else self.tasks or ()


@dataclass(frozen=True)
class EvolveRunConfig:
    """What the views read of an evolution's config (`EvolveConfig.snapshot()`)."""

    generations: int | None = None
    task_names: tuple[str, ...] = ()

    @classmethod
    def read(cls, config: Mapping[str, Any]) -> EvolveRunConfig:
        tasks = config.get("tasks")
        names = tuple(
            str(t.get("name", i)) if isinstance(t, Mapping) else str(i)
            for i, t in enumerate(tasks if isinstance(tasks, list) else [])
        )
        return cls(generations=_whole(config.get("generations")), task_names=names)
