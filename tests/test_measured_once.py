"""A deterministic evolution measures the final table's fixed rows once: a model whose test episodes an earlier
evolution of the store played the same way is adopted from it, neither materialised nor served
(cycleqd/evolution/evaluator.py); on a real SQLite file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from cycleqd.db.schema import CandidateKind, RunKind
from cycleqd.db.store import EpisodeRecord, Store, open_store
from cycleqd.evolution.evaluator import EpisodeEvaluator, donor_runs
from cycleqd.evolution.loop import CandidateUnderTest
from cycleqd.evolver.config import EvolveConfig, parse_config


@pytest.fixture(autouse=True)
def experts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for env in ("base", "os", "db"):  # the config asks for checkpoint folders; these are never loaded
        (tmp_path / env).mkdir()
        (tmp_path / env / "config.json").write_text("{}")


def config(**eval_spec: object) -> EvolveConfig:
    tasks = [{"name": env, "env": env, "expert": env, "test_split": "test", "limit": 2} for env in ("os", "db")]
    return parse_config({"base": "base", "tasks": tasks, "eval": {"deterministic": True, **eval_spec}}, "<t>",
                        Path.cwd())  # fmt: skip


def evolution(store: Store, evolve: EvolveConfig) -> str:
    return store.create_run(RunKind.EVOLVE, evolve.snapshot()).id


class UnservableManager:
    async def serve(self, ref: object) -> None:
        raise AssertionError(f"served {ref}: the model's episodes were all in the donor")


def test_only_deterministic_evolutions_that_measured_alike_are_donors(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    alike = evolution(store, config(concurrency=4))  # concurrency aside: it does not change a deterministic answer
    evolution(store, config(max_tokens=64))
    evolution(store, config(deterministic=False))
    store.create_run(RunKind.EVAL, {"model": "default"})
    mine = config()
    me = evolution(store, mine)
    assert donor_runs(store, me, mine) == [alike]
    assert donor_runs(store, me, config(deterministic=False)) == []  # a run without the mode adopts nothing


@dataclass
class Second:
    """An evolution after a donor that measured alike, its evaluator unable to serve, and the naive merge's model
    row and test tasks."""

    store: Store
    donor: str
    me: str
    evaluator: EpisodeEvaluator
    model: int
    task_ids: list[int]


@pytest.fixture
def second(tmp_path: Path) -> Second:
    store = open_store(tmp_path / "s.db")
    evolve = config()
    donor = evolution(store, evolve)
    me = evolution(store, evolve)
    evaluator = EpisodeEvaluator(store, me, evolve, None, tmp_path / "checkpoints", [UnservableManager()], None)  # type: ignore[arg-type, list-item]
    model = evaluator._genome_model_id("f00d", tmp_path / "checkpoints" / "f00d")
    tasks = [t for spec in evolve.tasks for t in evaluator.tasks[(spec.name, True)]]
    ids = [store.task_id(t.env, t.suite, t.split, t.key, t.content_hash) for t in tasks]
    return Second(store, donor, me, evaluator, model, ids)


def test_a_fixed_row_is_adopted_whole_and_its_server_is_not_touched(second: Second) -> None:
    store, donor = second.store, second.donor
    assert second.evaluator.donors == [donor]
    transcript = [{"role": "assistant", "content": "Act: answer(1)"}]
    for i, task in enumerate(second.task_ids):  # os: 1, 0; db: 1, 1
        store.record_episode(EpisodeRecord(donor, second.model, task, 0, "completed", float(i != 1), rounds=2,
                                           completion_tokens=7, transcript=transcript))  # fmt: skip
    other = store.model_id("sha256:other", "elsewhere")
    store.record_episode(EpisodeRecord(donor, other, second.task_ids[0], 0, "completed", 0.0))  # not adopted
    merge = CandidateUnderTest(1, CandidateKind.MERGE, None, "f00d")
    model_id, scores = asyncio.run(second.evaluator.evaluate(0, merge, test=True))
    assert (model_id, scores) == (second.model, {"os": 0.5, "db": 1.0})
    adopted = store.episodes(second.me)
    assert len(adopted) == 4 and {e.model_id for e in adopted} == {second.model}
    assert all(e.transcript == transcript and e.verdict == {"adopted_from": donor} for e in adopted)
    assert store.adopt_episodes(second.me, second.model, second.task_ids, [donor]) == 0  # never copied twice


def test_a_row_the_donor_holds_in_part_is_played(second: Second, tmp_path: Path) -> None:
    store, donor, ids = second.store, second.donor, second.task_ids
    store.record_episode(EpisodeRecord(donor, second.model, ids[0], 0, "completed", 1.0))
    store.record_episode(EpisodeRecord(donor, second.model, ids[1], 0, "env_error", None, error="engine"))  # unscored
    merge = CandidateUnderTest(1, CandidateKind.MERGE, None, "f00d", tmp_path / "merge")
    with pytest.raises(AssertionError, match="served"):  # the rest must be played, so the model is served
        asyncio.run(second.evaluator.evaluate(0, merge, test=True))
    assert [e.score for e in store.episodes(second.me)] == [1.0]
