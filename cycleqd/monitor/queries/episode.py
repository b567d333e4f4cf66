"""One episode's screen: the episode as stored, with its transcript and verdict (read once: it never changes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cycleqd.db.schema import Episode
from cycleqd.db.store import Store


@dataclass(frozen=True)
class EpisodeDetail:
    id: int
    run_id: str
    env: str
    suite: str
    split: str
    task_key: str
    repeat: int
    model: str
    status: str
    score: float | None
    rounds: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    error: str | None
    transcript: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime
    context_messages: int = 0  # leading messages the environment wrote (prompt, one-shot example, the task)
    verdict: dict[str, Any] = field(default_factory=dict)  # answer, expected, detail


def episode_detail(store: Store, episode_id: int) -> EpisodeDetail | None:
    with store.session() as session:
        episode = session.get(Episode, episode_id)
        if episode is None:
            return None
        task, model = episode.task, episode.model
        return EpisodeDetail(
            episode.id,
            episode.run_id,
            task.env,
            task.suite,
            task.split,
            task.task_key,
            episode.repeat,
            model.reference,
            episode.status,
            episode.score,
            episode.rounds,
            episode.prompt_tokens,
            episode.completion_tokens,
            episode.latency_s,
            episode.error,
            list(episode.transcript),
            episode.started_at,
            episode.finished_at,
            episode.context_messages,
            dict(episode.verdict or {}),
        )
