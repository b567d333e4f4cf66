"""Training data that teaches skills: AgentBench's OS training tasks as a suite (loaded through the OS loaders,
replayed through the real environment), the DB generator's tasks verified on the real MariaDB, MBPP's splits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cycleqd.envs.near_duplicates import NEAR, WordSetIndex
from cycleqd.envs.os.env import gold_replies
from cycleqd.envs.os.training import SPLITS, TRAINING_FILE, build_os_suite, explanation_thought, shared_data_root
from cycleqd.envs.registry import environment
from cycleqd.envs.task_files import read_task_records
from cycleqd.eval.tasks import load_eval_tasks
from cycleqd.suite.verify import replay_runtime

DATA = shared_data_root()
needs_os_training = pytest.mark.skipif(
    not (DATA / TRAINING_FILE).is_file(), reason=f"AgentBench's OS training file is not at {DATA / TRAINING_FILE}"
)


def test_explanation_becomes_a_first_person_thought_without_code() -> None:
    text = ("To solve this problem, you can use `find`.\n\nYou can use this command pattern to perform the task:\n\n"
            "```bash\nfind ~ -type f | wc -l\n```")  # fmt: skip
    assert explanation_thought(text) == "To solve this problem, I can use `find`."


@needs_os_training
def test_a_split_folder_without_the_asked_split_is_refused_not_read_whole(tmp_path: Path) -> None:
    from cycleqd.envs.registry import UnknownSplitError
    from cycleqd.envs.suites import split_task_files

    (tmp_path / "train.json").write_text("[]")
    (tmp_path / "dev.jsonl").write_text("")
    (tmp_path / "notes.json").write_text("[]")
    assert split_task_files(tmp_path, "dev") == [tmp_path / "dev.jsonl"]
    # before, a test split asked of this folder was every file in it: the training tasks scored as the test
    with pytest.raises(UnknownSplitError, match=r"has no split 'test'; it has: dev, train"):
        split_task_files(tmp_path, "test")
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "a.json").write_text("[]")
    (plain / "sub" / "b.jsonl").write_text("")
    assert split_task_files(plain, "test") == [plain / "a.json", plain / "sub" / "b.jsonl"]  # no splits: all of it


@needs_os_training
def test_os_training_suite_splits_are_disjoint_and_load(tmp_path: Path) -> None:
    suite = build_os_suite(DATA, tmp_path / "os")
    splits = {s: load_eval_tasks(["os"], str(suite), s, None) for s in SPLITS}
    # 60 + 60 held out of the 1,000; train loses its near-duplicates of every held-out task, dev those of test
    assert {s: len(t) for s, t in splits.items()} == {"train": 798, "dev": 54, "test": 60, "transfer": 128}
    descriptions = {s: {t.task.description for t in tasks} for s, tasks in splits.items()}  # type: ignore[union-attr]
    assert not descriptions["dev"] & descriptions["train"] and not descriptions["test"] & descriptions["train"]
    assert not descriptions["transfer"] & (descriptions["train"] | descriptions["dev"] | descriptions["test"])
    closest = {held: WordSetIndex(descriptions[held]) for held in ("dev", "test", "transfer")}
    worst = max(index.closest(d) for index in closest.values() for d in descriptions["train"])
    assert 0.5 < worst < NEAR  # no pair at or above the threshold, and the check is not vacuous
    assert max(closest["test"].closest(d) for d in descriptions["dev"]) < NEAR
    # the threshold did work: the training family paraphrases its held-out tasks
    every = [r["description"] for r in read_task_records(DATA / TRAINING_FILE)]
    assert sum(1 for d in every if closest["dev"].closest(d) >= NEAR) > len(descriptions["dev"])
    first = splits["train"][0].task
    reply = gold_replies(first, None)[0]  # type: ignore[arg-type]
    assert reply.startswith("Think: To solve this problem") and reply.count("```") == 2
    # the explanation is gold-only: it does not change the task's identity in the store
    assert (
        splits["train"][0].content_hash
        == type(splits["train"][0])(
            "os", str(suite), "train", first.task_id, type(first)(**{**first.__dict__, "explanation": None})
        ).content_hash
    )


@needs_os_training
async def test_os_training_tasks_replay_through_the_real_environment(os_image: str, tmp_path: Path) -> None:
    suite = build_os_suite(DATA, tmp_path / "os")
    tasks = [t.task for t in load_eval_tasks(["os"], str(suite), "train", 4)]
    async with replay_runtime("os", tasks, concurrency=1) as runtime:
        verdicts = [await environment("os").replay_gold(task, runtime) for task in tasks]
    assert sum(1 for v in verdicts if v.passed) >= 3, [(v.task_id, v.reason) for v in verdicts]
    passed = next(v for v in verdicts if v.passed)
    assert passed.transcript[passed.prompt_messages]["content"].startswith("Think: To solve this problem")


def test_generated_db_suite_verifies_fully_and_its_splits_are_disjoint(docker_engine: object, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from cycleqd.envs.db.generate import task_key, task_text
    from cycleqd.suite.verify import verify_suite

    out = tmp_path / "db"
    cycleqd = Path(sys.executable).parent / "cycleqd"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [str(cycleqd), "suite", "generate", "db", "--out", str(out), "--train", "40", "--dev", "12", "--test", "12"]
    made = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert made.returncode == 0, made.stderr
    assert f"{out / 'train.jsonl'}: 40 tasks" in made.stdout
    records = {
        s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "dev", "test")
    }
    keys = {s: {task_key(r) for r in rs} for s, rs in records.items()}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]
    for held, later in (("test", "dev"), ("test", "train"), ("dev", "train")):  # no near-duplicate across splits
        index = WordSetIndex(task_text(r) for r in records[held])
        assert max(index.closest(task_text(r)) for r in records[later]) < NEAR, (held, later)
    families = {r["type"][0].split("-")[0] for rs in records.values() for r in rs}
    assert {"INSERT", "UPDATE", "aggregation", "counting"} <= families
    reports = asyncio.run(verify_suite(out, "db", concurrency=4))
    ran = [v for r in reports for v in r.run]
    assert len(ran) == 64 and all(v.passed for v in ran), [(v.task_id, v.reason) for v in ran if not v.passed]
    # a second call keeps what is there: same files, nothing regenerated
    before = (out / "test.jsonl").read_text()
    assert subprocess.run(args, capture_output=True, text=True, env=env, timeout=120).returncode == 0
    assert (out / "test.jsonl").read_text() == before


@pytest.mark.skipif(not (DATA / "mbpp" / "mbpp.jsonl").is_file(), reason=f"MBPP is not at {DATA / 'mbpp'}")
async def test_coding_suite_has_mbpp_splits_and_its_gold_passes(os_image: str, tmp_path: Path) -> None:
    from cycleqd.demo.data import near_duplicate_pairs
    from cycleqd.envs.coding.training import build_coding_suite

    suite = build_coding_suite(DATA, tmp_path / "coding")
    splits = {s: load_eval_tasks(["coding"], str(suite), s, None) for s in ("train", "dev", "test", "transfer")}
    # MBPP's 374 + 10 train and 90 dev problems less their near-duplicates of held-out ones (all 500 test are kept)
    assert {s: len(t) for s, t in splits.items()} == {"train": 261, "dev": 60, "test": 500, "transfer": 164}
    assert near_duplicate_pairs("coding", suite) == []
    ids = {s: {t.task.task_id for t in tasks} for s, tasks in splits.items()}  # type: ignore[union-attr]
    assert not ids["train"] & ids["test"] and not ids["dev"] & ids["test"] and not ids["train"] & ids["dev"]
    assert not any(i.startswith("HumanEval/") for i in ids["train"])  # HumanEval is the transfer split, untrained
    assert all(i.startswith("HumanEval/") for i in ids["transfer"]) and "11" in ids["test"] and "601" in ids["train"]
    # 367, 601 and 927 build their arguments from classes the solution defines (trees of Node, lists of Pair): the
    # checker holds those objects as handles into the solution's process.
    by_id = {t.task.task_id: t.task for t in splits["train"] + splits["test"]}
    gold = [t.task for t in splits["train"]][::200] + [by_id[i] for i in ("367", "601", "927")]
    async with replay_runtime("coding", gold, concurrency=1) as runtime:
        for task in gold:
            verdict = await environment("coding").replay_gold(task, runtime)
            assert verdict.passed, verdict.reason


def test_demo_suites_are_sized_cached_and_train_where_they_should(docker_engine: object, tmp_path: Path) -> None:
    from cycleqd.demo.command import PRESETS, estimate
    from cycleqd.demo.data import IN_FAMILY, TRANSFER, demo_suites, near_duplicate_pairs

    suites = demo_suites(tmp_path, train=6, dev=4, test=5, db_train=8)
    outside = (DATA / TRAINING_FILE).is_file()
    for env, suite in suites.items():
        kinds = (IN_FAMILY, TRANSFER) if outside else (IN_FAMILY,)
        sizes = {s: len(load_eval_tasks([env], str(suite), s, None)) for s in ("train", "dev", *kinds)}
        assert sizes == {"train": 6, "dev": 4, IN_FAMILY: 5} | ({TRANSFER: 5} if outside else {}), (env, sizes)
        assert not list(suite.glob("test.json*"))  # each test split is named for its kind
        assert near_duplicate_pairs(env, suite) == [], env
    if outside:  # OS trains on AgentBench's training family; its transfer split is AgentBench's benchmark
        train = load_eval_tasks(["os"], str(suites["os"]), "train", None)
        assert all(t.task.explanation for t in train)  # type: ignore[union-attr]
        db_transfer = load_eval_tasks(["db"], str(suites["db"]), TRANSFER, None)
        assert all(t.task.table_name for t in db_transfer)  # type: ignore[union-attr]  # DBBench's standard tasks
    again = demo_suites(tmp_path, train=6, dev=4, test=5, db_train=8)
    assert again == suites  # cached: the same folders, nothing regenerated
    assert estimate(PRESETS["default"]).total_s <= 2 * 3600  # the default is sized for two hours on 2 cores
