"""Results that come out of the store: `export` (JSONL for `datasets`, CSV, inspect_ai logs), `compare`, `show`,
`runs rm`, on two real eval runs of the embedded SmolLM2 (real sandboxes, real SQLite)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cycleqd.db import open_store
from tests.cli_process import CYCLEQD_HERE

ROOT = Path(__file__).resolve().parents[1]
# The two evals of the fixture run inside the first test's time limit; on a loaded 2-core machine that is minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def cycleqd(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*CYCLEQD_HERE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@dataclass(frozen=True)
class TwoRuns:
    db: Path
    greedy: str  # OS (AgentBench's one-shot in the prompt) and coding, greedy
    sampled: str  # coding only, sampled at temperature 0.8 with a seed


@pytest.fixture(scope="module")
def two_runs(default_model, tmp_path_factory: pytest.TempPathFactory) -> TwoRuns:  # noqa: ANN001
    db = tmp_path_factory.mktemp("results") / "runs.db"
    common = ["--limit", "1", "--max-tokens", "24", "--rounds", "2", "--db", str(db), "--json"]
    greedy = cycleqd("eval", "--tasks", "os,coding", *common)
    assert greedy.returncode == 0, greedy.stderr
    sampled = cycleqd("eval", "--tasks", "coding", "--temperature", "0.8", "--seed", "7", *common)
    assert sampled.returncode == 0, sampled.stderr
    return TwoRuns(db, json.loads(greedy.stdout)["run"], json.loads(sampled.stdout)["run"])


def stored(db: Path, run_id: str) -> dict[int, tuple]:
    store = open_store(db)
    tasks = {t.id: t for t in store.tasks()}
    return {
        e.id: (tasks[e.task_id].env, tasks[e.task_id].task_key, e.transcript, e.score, e.status, e.prompt_tokens,
               e.completion_tokens, e.latency_s, e.context_messages)
        for e in store.episodes(run_id)
    }  # fmt: skip


def test_a_jsonl_export_holds_every_message_and_score_and_loads_with_datasets(
    two_runs: TwoRuns, tmp_path: Path
) -> None:  # noqa: E501
    out = tmp_path / "episodes.jsonl"
    done = cycleqd("export", two_runs.greedy[:6], "--db", str(two_runs.db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = stored(two_runs.db, two_runs.greedy)
    assert len(records) == len(expected) == 2
    for record in records:
        env, key, transcript, score, status, p_tokens, c_tokens, latency, context = expected[record["episode"]]
        assert (record["env"], record["task"], record["split"], record["run"]) == (env, key, "dev", two_runs.greedy)
        assert record["messages"] == transcript and record["score"] == score and record["status"] == status
        assert (record["prompt_tokens"], record["completion_tokens"]) == (p_tokens, c_tokens)
        assert record["latency_s"] == latency
        assert record["context_messages"] == context and context == (7 if env == "os" else 1)
        assert record["expected"]  # the grader's reference, for a person reading the export
    import datasets

    dataset = datasets.load_dataset("json", data_files=str(out), split="train")
    assert dataset.num_rows == 2
    assert [row["messages"] for row in dataset] == [r["messages"] for r in records]
    assert [row["score"] for row in dataset] == [r["score"] for r in records]
    # Filters: only the environment asked for; a score bound no episode reaches gives an empty file.
    coding = cycleqd("export", two_runs.greedy, "--db", str(two_runs.db), "--env", "coding")
    assert [json.loads(line)["env"] for line in coding.stdout.splitlines()] == ["coding"]
    best = max((v[3] for v in expected.values() if v[3] is not None), default=0.0)
    if best < 1:  # a bound is a score from 0 to 1 (past 1 it is refused)
        above = cycleqd("export", two_runs.greedy, "--db", str(two_runs.db), "--min-score", str((best + 1) / 2))
        assert above.returncode == 0 and above.stdout == ""


def test_a_csv_export_has_a_row_per_episode(two_runs: TwoRuns) -> None:
    done = cycleqd("export", two_runs.greedy, "--db", str(two_runs.db), "--format", "csv")
    rows = list(csv.DictReader(done.stdout.splitlines()))
    expected = stored(two_runs.db, two_runs.greedy)
    assert sorted(int(r["episode"]) for r in rows) == sorted(expected)
    for row in rows:
        assert float(row["score"]) == expected[int(row["episode"])][3]
        assert int(row["messages"]) == len(expected[int(row["episode"])][2])


def test_the_inspect_log_opens_with_inspect_ais_reader(two_runs: TwoRuns, tmp_path: Path) -> None:
    from inspect_ai.log import read_eval_log

    done = cycleqd("export", two_runs.greedy, "--db", str(two_runs.db), "--format", "inspect", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    expected = stored(two_runs.db, two_runs.greedy)
    samples = {}
    for path in sorted(tmp_path.glob("*.eval")):
        log = read_eval_log(str(path))
        assert log.status == "success" and log.eval.run_id == two_runs.greedy
        samples.update({s.metadata["episode"]: s for s in log.samples})
    assert sorted(samples) == sorted(expected)
    for episode_id, sample in samples.items():
        _env, key, transcript, score, status, p_tokens, c_tokens, *_ = expected[episode_id]
        assert sample.id == key and sample.scores["cycleqd"].value == score
        assert [(m.role, m.text) for m in sample.messages] == [(m["role"], m["content"]) for m in transcript]
        usage = next(iter(sample.model_usage.values()))
        assert (usage.input_tokens, usage.output_tokens) == (p_tokens, c_tokens)
        assert sample.metadata["status"] == status


def test_compare_gives_the_numbers_the_store_holds(two_runs: TwoRuns) -> None:
    done = cycleqd("compare", two_runs.greedy, two_runs.sampled, "--db", str(two_runs.db), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [c["run"] for c in report["columns"]] == [two_runs.greedy, two_runs.sampled]
    store = open_store(two_runs.db)
    for index, run_id in enumerate((two_runs.greedy, two_runs.sampled)):
        for aggregate in store.aggregates(run_id):
            [group] = [g for g in report["envs"] if (g["env"], g["split"]) == (aggregate.env, aggregate.split)]
            column = group["columns"][index]
            assert column["score"] == pytest.approx(aggregate.score)
            assert column["episodes"] == aggregate.episodes and column["errors"] == aggregate.errors
            low, high = column["ci95"]
            assert low <= column["score"] <= high
    # The OS task ran in the first run only: no score in the second column.
    [os_group] = [g for g in report["envs"] if g["env"] == "os"]
    assert os_group["columns"][1]["score"] is None
    per_task = {(t["env"], t["task"]): t["scores"] for t in report["tasks"]}
    for index, run_id in enumerate((two_runs.greedy, two_runs.sampled)):
        for env, key, _t, score, *_ in stored(two_runs.db, run_id).values():
            assert per_task[(env, key)][index] == score
    differ = {(d["env"], d["task"]) for d in report["differ"]}
    assert differ == {k for k, (a, b) in per_task.items() if a is not None and b is not None and a != b}


def test_show_records_sampling_and_runs_rm_removes_only_its_run(two_runs: TwoRuns, tmp_path: Path) -> None:
    shown = json.loads(cycleqd("show", two_runs.sampled[:5], "--db", str(two_runs.db), "--json").stdout)
    assert shown["config"]["sampling"] == {"temperature": 0.8, "top_p": None, "seed": 7}
    assert all(r["wall_s"] >= 0 for r in shown["results"]) and shown["tasks"]
    copy = tmp_path / "copy.db"
    copy.write_bytes(two_runs.db.read_bytes())
    removed = cycleqd("runs", "rm", two_runs.sampled, "--db", str(copy))
    assert removed.returncode == 0 and f"removed run {two_runs.sampled}" in removed.stdout
    store = open_store(copy)
    assert store.get_run(two_runs.sampled) is None and store.episodes(two_runs.sampled) == []
    assert len(store.episodes(two_runs.greedy)) == 2 and store.aggregates(two_runs.sampled) == []
    missing = cycleqd("show", two_runs.sampled, "--db", str(copy))
    assert missing.returncode == 2 and f"no run '{two_runs.sampled}'" in missing.stderr
