"""The demo's reply budget lets every skill be won: ≥ 95% of every split's gold replies fit its max_tokens, counted
in the default model's own tokens over the real train/dev/test data (and the transfer benchmarks)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cycleqd.demo.command import PRESETS, DemoBudget
from cycleqd.demo.data import IN_FAMILY, TRANSFER
from cycleqd.demo.gold_lengths import FIT_SHARE, fit, needed_tokens, task_lengths
from cycleqd.envs.coding.episode import load_coding_tasks
from cycleqd.envs.coding.training import MBPP_FILE, build_coding_suite
from cycleqd.envs.db.generate import MAX_VALUES, draft_record
from cycleqd.envs.db.tasks import MODIFYING, load_db_tasks, parse_db_task
from cycleqd.envs.os.tasks import load_os_tasks
from cycleqd.envs.os.training import TRAINING_FILE, build_os_suite, shared_data_root
from cycleqd.envs.registry import environment, names

DBBENCH = Path("agentbench/AgentBench/dbbench/standard.jsonl")
DATA = shared_data_root()
needs_data = pytest.mark.skipif(
    not all((DATA / p).is_file() for p in (TRAINING_FILE, MBPP_FILE, DBBENCH)), reason=f"no outside data in {DATA}"
)


@pytest.fixture(scope="module")
def lengths(default_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:  # noqa: ANN001
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model.path)
    root = tmp_path_factory.mktemp("suites")
    os_suite = build_os_suite(DATA, root / "os")
    coding_suite = build_coding_suite(DATA, root / "coding")
    out = {}
    for split in ("train", "dev", "test", "transfer"):
        out[f"os/{split}"] = task_lengths(tokenizer, "os", load_os_tasks(os_suite / f"{split}.json"))
        out[f"coding/{split}"] = task_lengths(tokenizer, "coding", load_coding_tasks(coding_suite / f"{split}.jsonl"))
    for split in ("train", "dev", "test"):
        out[f"db/{split}"] = task_lengths(tokenizer, "db", db_drafts(split))
    out["db/transfer"] = task_lengths(tokenizer, "db", load_db_tasks(DATA / DBBENCH))
    return out


def db_drafts(split: str, count: int = 400) -> list:
    """The generated DB family as drafts (the generator's own draws before MariaDB answers them): the gold SQL is
    the draft's; a SELECT's answer is stood in for by MAX_VALUES long values, the most the generator keeps."""
    rng = random.Random(f"budget-{split}")
    tasks = []
    for index in range(count):
        record = draft_record(rng)
        if record["type"][0] in MODIFYING:
            record["answer_md5"] = "0" * 32
        else:
            record["label"] = ["Neuromancer"] * MAX_VALUES
        tasks.append(parse_db_task(record, f"draft-{split}", index))
    return tasks


def played(lengths: dict[str, list[int]], budget: DemoBudget) -> dict[str, list[int]]:
    """The gold lengths of the splits a preset plays: train (the experts), dev (selection), its test kind."""
    test = {IN_FAMILY: "test", TRANSFER: "transfer"}[budget.test_kind]
    return {label: values for label, values in lengths.items() if label.split("/")[1] in ("train", "dev", test)}


@needs_data
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_played_splits_gold_replies_fit_the_presets_budget(lengths: dict[str, list[int]], preset: str) -> None:
    budget = PRESETS[preset]
    assert len(lengths["os/train"]) > 700 and len(lengths["os/transfer"]) > 100 and len(lengths["coding/test"]) == 500
    assert len(lengths["coding/transfer"]) == 164 and len(lengths["db/transfer"]) == 300
    mine = played(lengths, budget)
    assert len(mine) == 9
    short = [fit(label, values, budget.max_tokens) for label, values in mine.items()]
    assert all(f.share >= FIT_SHARE for f in short), [f.describe() for f in short if f.share < FIT_SHARE]
    # the least that fits, not a guess: 32 tokens fewer would cut more than 5% of some split
    assert max(needed_tokens(values) for values in mine.values()) == budget.max_tokens
    assert budget.rounds >= max(environment(env).gold_rounds for env in names())
    db = environment("db")
    assert all(len(db.gold_texts(t)) <= db.gold_rounds for t in db_drafts("dev", 50))


@needs_data
def test_the_old_budget_cut_most_os_golds(lengths: dict[str, list[int]]) -> None:
    assert fit("os/transfer", lengths["os/transfer"], 128).share < 0.5  # the 16 of 25 demo test tasks
    assert fit("os/train", lengths["os/train"], 128).share < 0.55


def test_every_deviation_from_the_paper_is_listed() -> None:
    lines = " | ".join(DemoBudget().deviations())
    for expected in ("bins per BC: 5, paper 15", "generations: 10, paper 1200", "tokens per reply: 224, paper 512",
                     "rounds per episode: 3, paper 5", "SmolLM2", "25 per environment"):  # fmt: skip
        assert expected in lines
    assert "coding's test is HumanEval" in " | ".join(DemoBudget(test_kind="transfer").deviations())
    paper = DemoBudget(generations=1200, bins=15, max_tokens=512, rounds=5)
    assert "bins per BC" not in " | ".join(paper.deviations())
