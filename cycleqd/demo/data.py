"""The demo's task suites: data that teaches each skill, and dev and test splits sized to the budget.

Every suite has train, dev (selection during the evolution) and two kinds of test split, named for what they test:
- `in-family`: held out of the family the expert trained on (OS: AgentBench's training family; DB: the generated
  tasks; coding: MBPP's test split);
- `transfer`: a benchmark written apart from the training data (OS: AgentBench's own OS benchmark; DB: DBBench's
  `standard.jsonl`; coding: HumanEval), where `../shared/data` (or $CYCLEQD_DATA) has it.
No train task is a near-duplicate of a dev or test task (envs/near_duplicates.py; word-set Jaccard ≥ 0.7), which
the builders (envs/os/training.py, envs/db/generate.py, envs/coding/training.py) ensure and `near_duplicate_pairs`
checks.
Without the outside data: the built-in OS suite, HumanEval alone, and no transfer split. Each suite is copied
with dev and test cut to the budget's sizes (an evenly spread subset, so every group of a file keeps its share),
and cached by content: a second demo finds it all in place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from cycleqd.envs.coding import training as coding_training
from cycleqd.envs.coding.training import MBPP_FILE, build_coding_suite, problem_text
from cycleqd.envs.db.generate import suite_folder, task_text
from cycleqd.envs.near_duplicates import NEAR, WordSetIndex
from cycleqd.envs.os import training as os_training
from cycleqd.envs.os.training import TRAINING_FILE, build_os_suite, shared_data_root
from cycleqd.envs.registry import BUILTIN_DATA
from cycleqd.envs.task_files import read_task_records
from cycleqd.suite.generate import generated_db_suite

DATA_VERSION = 2  # bumped when the demo's choice of data changes, so that experts trained on older data are redone
IN_FAMILY, TRANSFER = "in-family", "transfer"
TEST_KINDS = {IN_FAMILY: "held out of the family the expert trained on",
              TRANSFER: "a benchmark written apart from the training data"}  # fmt: skip
DBBENCH_FILE = Path("agentbench/AgentBench/dbbench/standard.jsonl")
SOURCE_SPLITS = {"train": "train", "dev": "dev", "test": IN_FAMILY, "transfer": TRANSFER}  # source file → demo split

# What near-duplicates are judged on, per environment (the words a model reads as the task).
TASK_TEXT: dict[str, Callable[[dict], str]] = {
    "os": lambda r: str(r.get("description", "")),
    "db": task_text,
    "coding": problem_text,
}


def spread(records: list, count: int) -> list:
    """`count` records evenly spaced over the list (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    return [records[i * len(records) // count] for i in range(count)]


def split_files(folder: Path) -> dict[str, Path]:
    """The folder's source split files by their name before the first dot (train.json → train)."""
    return {p.name.split(".")[0]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in (".json", ".jsonl") and not p.name.startswith(".")}  # fmt: skip


def sized_suite(source: Path, out_root: Path, train: int, dev: int, test: int, extra: dict[str, Path] | None = None
                ) -> Path:  # fmt: skip
    """A copy of the suite folder `source` (plus `extra` split files) with the demo's split names, whose train, dev
    and test files hold that many tasks at most (both test kinds `test`)."""
    files = {split: path for split, path in split_files(source).items() if split in SOURCE_SPLITS}
    files |= extra or {}
    contents = sorted((split, str(path), path.stat().st_size) for split, path in files.items())
    digest = hashlib.sha256(json.dumps([str(source), train, dev, test, DATA_VERSION, contents]).encode())
    out = out_root / f"{source.name}-{digest.hexdigest()[:12]}"
    if (out / ".complete").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": train, "dev": dev, IN_FAMILY: test, TRANSFER: test}
    for split, path in files.items():
        name = SOURCE_SPLITS[split]
        records = spread(read_task_records(path), sizes[name])
        text = "".join(json.dumps(r) + "\n" for r in records) if path.suffix == ".jsonl" else json.dumps(records)
        (out / f"{name}{path.suffix}").write_text(text)
    (out / ".complete").write_text("")
    return out


def near_duplicate_pairs(env: str, suite: Path) -> list[tuple[str, str, float]]:
    """(train split, held-out split, similarity) for every train task at or above NEAR to a dev or test task."""
    files = split_files(suite)
    text = TASK_TEXT[env]
    found = []
    for held in (s for s in files if s != "train"):
        index = WordSetIndex(text(r) for r in read_task_records(files[held]))
        for record in read_task_records(files["train"]) if "train" in files else []:
            if (similarity := index.closest(text(record))) >= NEAR:
                found.append(("train", held, similarity))
    return found


def demo_suites(
    cache: Path, train: int, dev: int, test: int, db_train: int, console: object | None = None
) -> dict[str, Path]:
    """Per environment, the suite folder the demo trains (train), selects (dev) and reports (the test kinds) on."""
    data = shared_data_root()
    os_source = (build_os_suite(data, cache / f"os-agentbench-v{os_training.SUITE_VERSION}")
                 if (data / TRAINING_FILE).is_file() else BUILTIN_DATA / "os")  # fmt: skip
    has_mbpp = (data / MBPP_FILE).is_file()
    coding_out = cache / (f"coding-mbpp-v{coding_training.SUITE_VERSION}" if has_mbpp else "coding-he")
    coding_source = build_coding_suite(data if has_mbpp else None, coding_out)
    counts = {"train": db_train, "dev": dev, "test": test}
    db_source = generated_db_suite(suite_folder(cache, counts, seed=0), counts, 0, console)  # type: ignore[arg-type]
    db_extra = {"transfer": data / DBBENCH_FILE} if (data / DBBENCH_FILE).is_file() else {}
    sized = cache / "sized"
    return {
        "os": sized_suite(os_source, sized, train, dev, test),
        "db": sized_suite(db_source, sized, train, dev, test, db_extra),
        "coding": sized_suite(coding_source, sized, train, dev, test),
    }
