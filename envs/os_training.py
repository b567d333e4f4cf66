"""AgentBench's OS training tasks (`os_interaction/train_0317/training.json`, 1,000 tasks in the OS task format
plus an `explanation`) as a suite with disjoint splits, and the explanation as the gold reply's thought.

The suite is a folder of `train.json`, `dev.json` and `test.json`: train and dev are the training family (dev is
a held-out slice of it, for selection during an evolution); test is AgentBench's own OS benchmark (`data/1`..`7`),
a different family written by other people, restricted to the tasks that run here (no network in their set-up,
no check script beyond the five comparators cycleqd implements natively).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cycleqd.envs.errors import ScriptUnavailableError, TaskFormatError
from cycleqd.envs.os_checks import check_scripts_available
from cycleqd.envs.os_tasks import network_commands, parse_task
from cycleqd.envs.task_files import read_task_records

TRAINING_FILE = Path("agentbench/AgentBench/os_interaction/train_0317/training.json")
BENCHMARK_DIR = Path("agentbench/AgentBench/os_interaction/data")
DEV_TASKS = 60  # held out of the training family, every 16th task (spread over its topics)
_CODE = re.compile(r"```.*?(```|$)", re.DOTALL)
_ADVICE = re.compile(r"\b[Yy]ou (can|could|need|will|should|must|may|have)\b")  # advice to the reader → "I …"
_POINTER = re.compile(r"\s*(You can use (this|the following) command( pattern)?[^.:]*[.:])\s*$", re.IGNORECASE)


def shared_data_root() -> Path:
    """Where outside task data lies: $CYCLEQD_DATA, else `../shared/data` beside the project checkout."""
    return Path(os.environ.get("CYCLEQD_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


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
    """Write the suite's three split files under `out` (once: an existing suite is kept) and return `out`."""
    if all((out / f"{split}.json").is_file() for split in ("train", "dev", "test")):
        return out
    training = read_task_records(data_root / TRAINING_FILE)
    step = max(1, len(training) // DEV_TASKS)
    dev = [t for i, t in enumerate(training) if i % step == 0][:DEV_TASKS]
    dev_ids = {id(t) for t in dev}
    train = [t for t in training if id(t) not in dev_ids]
    test = []
    for path in sorted((data_root / BENCHMARK_DIR).glob("[0-9]*/*.json")):
        records = read_task_records(path)
        test.extend(r for i, r in enumerate(records) if runs_here(r, str(path), i))
    out.mkdir(parents=True, exist_ok=True)
    for split, records in (("train", train), ("dev", dev), ("test", test)):
        temporary = out / f".{split}.tmp"  # not matched by the split glob if left behind
        temporary.write_text(json.dumps(records, indent=1))
        temporary.replace(out / f"{split}.json")
    return out
