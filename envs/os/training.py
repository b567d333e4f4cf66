"""AgentBench's OS training tasks (`os_interaction/train_0317/training.json`, 1,000 tasks in the OS task format
plus an `explanation`) as a suite with disjoint splits, and the explanation as the gold reply's thought.

The suite is a folder of `train.json`, `dev.json`, `test.json` and `transfer.json`. dev and test are held out of
the training family (every 16th task, and every 16th from the 8th: spread over its topics): dev for selection
during an evolution, test the in-family held-out set. transfer is AgentBench's own OS benchmark (`data/1`..`7`),
restricted to the tasks that run here (no network in their set-up, no check script beyond the five comparators
cycleqd implements natively); it was written apart from the training family, though `data/7` shares its task
schema. No task of train is a near-duplicate (envs/near_duplicates.py: word-set Jaccard ≥ 0.7 of the
descriptions) of a dev, test or transfer task, and no dev task of a test task.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cycleqd.envs.errors import ScriptUnavailableError, TaskFormatError
from cycleqd.envs.near_duplicates import drop_near
from cycleqd.envs.os.checks import check_scripts_available
from cycleqd.envs.os.tasks import network_commands, parse_task
from cycleqd.envs.task_files import read_task_records

TRAINING_FILE = Path("agentbench/AgentBench/os_interaction/train_0317/training.json")
BENCHMARK_DIR = Path("agentbench/AgentBench/os_interaction/data")
HELD_OUT_TASKS = 60  # dev, and as many for the in-family test: every 16th task, and every 16th from the 8th
SPLITS = ("train", "dev", "test", "transfer")
SUITE_VERSION = 2  # 2: an in-family test split, the benchmark as transfer, near-duplicates dropped
_CODE = re.compile(r"```.*?(```|$)", re.DOTALL)
_ADVICE = re.compile(r"\b[Yy]ou (can|could|need|will|should|must|may|have)\b")  # advice to the reader → "I …"
_POINTER = re.compile(r"\s*(You can use (this|the following) command( pattern)?[^.:]*[.:])\s*$", re.IGNORECASE)


def shared_data_root() -> Path:
    """Where outside task data lies: $CYCLEQD_DATA, else `../shared/data` beside the project checkout."""
    return Path(os.environ.get("CYCLEQD_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def explanation_thought(explanation: str) -> str:
    """The explanation as a thought: its prose only. The code it ends with goes in the reply's action, and a
    second code block in the thought would be a second action to the parser."""
    prose = _CODE.sub("", explanation).strip()
    prose = _ADVICE.sub(r"I \1", _POINTER.sub("", prose).strip())
    return " ".join(prose.split())


def runs_here(record: object, source: str, index: int) -> bool:
    """Whether a benchmark task can be scored here: parseable, no network in its set-up, no unknown script."""
    try:
        task = parse_task(record, source, index)
        check_scripts_available(task, None)
    except (TaskFormatError, ScriptUnavailableError):
        return False
    return not network_commands(task)


def build_os_suite(data_root: Path, out: Path) -> Path:
    """Write the suite's split files under `out` (once: an existing suite is kept) and return `out`."""
    if all((out / f"{split}.json").is_file() for split in SPLITS):
        return out
    training = read_task_records(data_root / TRAINING_FILE)
    step = max(1, len(training) // HELD_OUT_TASKS)
    held = {offset: [t for i, t in enumerate(training) if i % step == offset][:HELD_OUT_TASKS] for offset in (0, 8)}
    held_ids = {id(t) for tasks in held.values() for t in tasks}
    transfer = []
    for path in sorted((data_root / BENCHMARK_DIR).glob("[0-9]*/*.json")):
        records = read_task_records(path)
        transfer.extend(r for i, r in enumerate(records) if runs_here(r, str(path), i))
    test = held[8]
    dev = drop_near(held[0], (t["description"] for t in test), _description)
    train = drop_near([t for t in training if id(t) not in held_ids],
                      (t["description"] for t in (*dev, *test, *transfer)), _description)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for split, records in zip(SPLITS, (train, dev, test, transfer), strict=True):
        temporary = out / f".{split}.tmp"  # not matched by the split glob if left behind
        temporary.write_text(json.dumps(records, indent=1))
        temporary.replace(out / f"{split}.json")
    return out


def _description(record: dict) -> str:
    return str(record.get("description", ""))
