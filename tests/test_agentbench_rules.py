"""A differential test of DBBench's scoring rules against AgentBench v0.2, on the real DBBench data in
../shared/data. The oracle below is written from reading v0.2's `src/server/tasks/dbbench/__init__.py`
(`start_sample`, `metrics`), not copied: how an answer string becomes a list (its `eval`, then `list`, else the
string alone), how one value compares (as floats when both parse), how several compare (as sets), and which tasks
each accuracy counts (SELECT's counts everything that is neither INSERT nor UPDATE, DELETE included).
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import pytest

from cycleqd.envs.db.episode import dbbench_metrics, select_answer_correct
from cycleqd.envs.db.tasks import DBTask, load_db_tasks, parse_db_task

SHARED_DB = Path(__file__).resolve().parents[2] / "shared" / "data" / "agentbench" / "AgentBench" / "dbbench"
pytestmark = pytest.mark.skipif(not SHARED_DB.exists(), reason=f"the shared DBBench data is not at {SHARED_DB}")
V02_TYPES = ["other", "counting", "comparison", "ranking", "aggregation-SUM", "aggregation-MIN", "aggregation-MAX",
             "aggregation-AVG", "SELECT", "INSERT", "UPDATE"]  # fmt: skip


def v02_as_list(answer: str) -> list[Any]:
    """v0.2 turns the answer into a list with Python's eval (only safe here: the answers are ours)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return list(eval(answer))  # noqa: S307 - the oracle reproduces v0.2, on answers this test wrote
    except Exception:  # noqa: BLE001 - v0.2 falls back to the text on any failure
        return [answer]


def v02_select_correct(answer: str, label: list[Any]) -> bool:
    given = v02_as_list(answer)
    if len(given) != 1 or len(label) != 1:  # several values: compared as sets; unhashable ones never match
        try:
            return set(given) == set(label)
        except TypeError:
            return False
    left, right = given[0], label[0]
    try:  # one value each: as numbers when both read as floats, else as they are
        left, right = float(left), float(right)
    except (ValueError, TypeError):
        pass
    return left == right


def v02_accuracy(kind: str, results: list[tuple[str, float]]) -> float | None:
    """v0.2's per-type accuracy over (category, correct) pairs; None where it has no task (it warns and gives 0)."""
    chosen = [ok for category, ok in results if category == kind or (kind == "SELECT" and category not in
              ("INSERT", "UPDATE"))]  # fmt: skip
    return sum(chosen) / len(chosen) if chosen else None


def candidate_answers(label: list[Any]) -> list[str]:
    """What a model might write after `Final Answer:` (the captured text keeps the space after the colon)."""
    answers = [json.dumps(label), json.dumps(label[::-1]), str(label), json.dumps(["surely wrong"]), "", " []",
               str(label[0]), json.dumps([*label, "extra"])]  # fmt: skip
    try:
        answers.append(json.dumps([str(float(label[0]))]))  # "7.0" for "7"
        answers.append(f"[{float(label[0])}]")  # a number, not a string
    except (ValueError, TypeError):
        pass
    return [" " + a for a in answers]


def shared_tasks() -> list[DBTask]:
    return [t for name in ("dev.jsonl", "standard.jsonl") for t in load_db_tasks(SHARED_DB / name)]


def test_select_answers_are_judged_as_v02_judges_them() -> None:
    compared = 0
    for task in shared_tasks():
        if task.modifies:
            continue
        for answer in candidate_answers(list(task.label)):
            assert select_answer_correct(answer, task.label) == v02_select_correct(answer, list(task.label)), (
                task.task_id,
                answer,
            )
            compared += 1
    assert compared > 1000


def test_the_one_known_difference_is_that_answers_are_never_evaluated_as_code() -> None:
    # v0.2 runs eval on the model's text; we read literals only, so an expression stays text.
    assert v02_select_correct(" [1+1]", ["2"]) and not select_answer_correct(" [1+1]", ["2"])


def test_metrics_count_as_v02_counts_them() -> None:
    tasks = shared_tasks()
    delete = parse_db_task(
        {"description": "d", "type": ["DELETE"], "answer_md5": "x", "add_description": "", "label": ["DELETE FROM t"],
         "table": {"table_name": "t", "table_info": {"columns": [{"name": "a"}], "rows": [["1"]]}}},
        "delete.jsonl", 0,
    )  # fmt: skip
    tasks += [delete] * 7  # the shared data has no DELETE; v0.2 counts them in SELECT's accuracy
    draw = random.Random(14)
    for _ in range(20):
        scored = [(task, float(draw.random() < 0.4)) for task in tasks]
        ours = dbbench_metrics(scored)
        results = [(task.category, score) for task, score in scored]
        expected = {f"{kind}_accuracy": v02_accuracy(kind, results) for kind in V02_TYPES}
        for key, value in expected.items():
            if value is not None:
                assert ours[key] == pytest.approx(value), key
        overall = sum(v02_accuracy(k, results) or 0.0 for k in ("SELECT", "INSERT", "UPDATE")) / 3
        assert ours["overall_cat_accuracy"] == pytest.approx(overall)
