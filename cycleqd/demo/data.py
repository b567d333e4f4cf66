"""The demo's task suites: data that teaches each skill, and dev/test splits sized to the budget.

OS: AgentBench's OS training tasks (train, a held-out dev slice) with AgentBench's own benchmark as test, when
`../shared/data` (or $CYCLEQD_DATA) has them; else the built-in OS suite. DB: a generated suite (answers computed
on MariaDB). Coding: MBPP's splits plus HumanEval's train share when MBPP is there; else HumanEval alone.
Each is then copied with its dev and test splits cut to the budget's sizes (an evenly spread subset, so every
group of a file keeps its share), and cached by content: a second demo finds it all in place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cycleqd.envs.coding_training import MBPP_FILE, build_coding_suite
from cycleqd.envs.db_generate import suite_folder
from cycleqd.envs.os_training import TRAINING_FILE, build_os_suite, shared_data_root
from cycleqd.envs.suites import BUILTIN
from cycleqd.envs.task_files import read_task_records
from cycleqd.suite.generate import generated_db_suite

DATA_VERSION = 1  # bumped when the demo's choice of data changes, so that experts trained on older data are redone


def spread(records: list, count: int) -> list:
    """`count` records evenly spaced over the list (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    return [records[i * len(records) // count] for i in range(count)]


def sized_suite(source: Path, out_root: Path, train: int, dev: int, test: int) -> Path:
    """A copy of the suite folder `source` whose train, dev and test files hold that many tasks at most."""
    files = sorted(p for p in source.iterdir() if p.name.split(".")[0] in ("train", "dev", "test") and p.is_file())
    digest = hashlib.sha256(
        json.dumps([str(source), train, dev, test, [(p.name, p.stat().st_size) for p in files]]).encode()
    )
    out = out_root / f"{source.name}-{digest.hexdigest()[:12]}"
    if (out / ".complete").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        split = path.name.split(".")[0]
        records = read_task_records(path)
        records = spread(records, {"train": train, "dev": dev, "test": test}[split])
        text = "".join(json.dumps(r) + "\n" for r in records) if path.suffix == ".jsonl" else json.dumps(records)
        (out / path.name).write_text(text)
    (out / ".complete").write_text("")
    return out


def demo_suites(
    cache: Path, train: int, dev: int, test: int, db_train: int, console: object | None = None
) -> dict[str, Path]:
    """Per environment, the suite folder the demo trains (train), selects (dev) and reports (test) on."""
    data = shared_data_root()
    os_source = (build_os_suite(data, cache / "os-agentbench") if (data / TRAINING_FILE).is_file()
                 else BUILTIN / "os")  # fmt: skip
    has_mbpp = (data / MBPP_FILE).is_file()
    coding_source = build_coding_suite(data if has_mbpp else None, cache / ("coding-mbpp" if has_mbpp else "coding-he"))
    counts = {"train": db_train, "dev": dev, "test": test}
    db_source = generated_db_suite(suite_folder(cache, counts, seed=0), counts, 0, console)  # type: ignore[arg-type]
    sized = cache / "sized"
    return {env: sized_suite(source, sized, train, dev, test)
            for env, source in (("os", os_source), ("db", db_source), ("coding", coding_source))}  # fmt: skip
