"""Coding data for an expert and an evolution: MBPP's own splits (google-research's `mbpp.jsonl`, task ids 1–10
prompt, 11–510 test, 511–600 validation, 601–974 train) as a suite folder, with HumanEval as its transfer split.

train: MBPP train and prompt; dev: MBPP's validation split; test: MBPP's test split (in-family: held out of the
family the expert trained on); transfer: all of HumanEval, none of which is trained on (another family of problems,
written apart from MBPP). MBPP's prompts are short and formulaic, and many of its train problems are paraphrases
of test ones ("the sum of even numbers" / "of odd numbers"): train keeps no near-duplicate (envs/near_duplicates.py:
word-set Jaccard ≥ 0.7 of the problem text) of a dev, test or transfer problem, and dev none of a test problem.
Without MBPP the suite is HumanEval alone, dealt as the built-in coding suite deals it, and has no transfer split.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from cycleqd.envs.coding.episode import humaneval_path
from cycleqd.envs.near_duplicates import drop_near

MBPP_FILE = Path("mbpp/mbpp.jsonl")
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "dev": range(511, 601), "train": range(601, 975)}
HUMANEVAL_TRAIN = (2, 3)  # the built-in suite's round-robin shares for train (see cycleqd.eval.tasks)
SUITE_VERSION = 2  # 2: HumanEval moved from train to a transfer split, near-duplicates dropped


def build_coding_suite(data_root: Path | None, out: Path) -> Path:
    """Write train.jsonl, dev.jsonl, test.jsonl (and transfer.jsonl with MBPP) under `out` (once: an existing suite
    is kept)."""
    if (out / "test.jsonl").is_file() and all((out / f"{split}.jsonl").is_file() for split in ("train", "dev")):
        return out
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        humaneval = [json.loads(line) for line in f if line.strip()]

    def share(*parts: int) -> list[dict]:
        return [r for i, r in enumerate(humaneval) if i % 4 in parts]

    if data_root is None:
        splits = {"train": share(*HUMANEVAL_TRAIN), "dev": share(0), "test": share(1)}
    else:
        mbpp = [json.loads(line) for line in (data_root / MBPP_FILE).read_text().splitlines() if line.strip()]

        def ids(split: str) -> list[dict]:
            return [r for r in mbpp if r["task_id"] in MBPP_SPLITS[split]]

        test = ids("test")
        dev = drop_near(ids("dev"), map(problem_text, test), problem_text)
        train = drop_near(ids("train") + ids("prompt"), map(problem_text, [*dev, *test, *humaneval]), problem_text)
        splits = {"train": train, "dev": dev, "test": test, "transfer": humaneval}
    out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        temporary = out / f".{split}.tmp"  # not matched by the split glob if left behind
        temporary.write_text("".join(json.dumps(r) + "\n" for r in records))
        temporary.replace(out / f"{split}.jsonl")
    return out


def problem_text(record: dict) -> str:
    """The problem as the model reads it: MBPP's `text`, HumanEval's `prompt`."""
    return str(record.get("text") or record.get("prompt") or "")
