"""What a new user reported of reading results out of the store: export filters that matched nothing and said
"0 episode(s) exported", `compare` that put unrelated runs side by side with no paired difference and read one store
only, and an evolution's exports that blended dev and test scores, named no role and gave a path for a model. Each
command runs in this process through the CLI's one error boundary, on a real SQLite store built here (no Docker, no
model server)."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cycleqd.db import open_store
from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.store import EpisodeRecord, Store
from cycleqd.envs.registry import names as environment_names
from cycleqd.results.stats import paired_ci
from tests.cli_in_process import Run, one_line_error

TRANSCRIPT = [{"role": "user", "content": "the task"}, {"role": "assistant", "content": "Act: answer(1)"}]


def add_episodes(store: Store, run_id: str, model: int, env: str, split: str, scores: list[float | None],
                 tokens: tuple[int, int] = (100, 10), first: int = 0) -> None:  # fmt: skip
    """One episode per score on tasks `{env}-{split}-{first}`, …; None is an environment error."""
    for offset, score in enumerate(scores):
        task = store.task_id(env, "builtin", split, f"{env}-{split}-{first + offset}", "hash")
        status = "env_error" if score is None else "completed" if score else "round_limit"
        store.record_episode(EpisodeRecord(run_id, model, task, 0, status, score, rounds=1, prompt_tokens=tokens[0],
                                           completion_tokens=tokens[1], transcript=TRANSCRIPT, context_messages=1,
                                           error="the sandbox is gone" if score is None else None))  # fmt: skip


@dataclass(frozen=True)
class Evals:
    db: Path
    a: str  # os/dev tasks 0–3: 1 0 1 0
    b: str  # the same tasks: 1 1 1 0
    test: str  # os/test tasks 0–2, none of a's
    some: str  # os/dev tasks 2–5: two of a's


@pytest.fixture
def evals(tmp_path: Path) -> Evals:
    db = tmp_path / "runs.db"
    store = open_store(db)
    small = store.model_id("sha256:" + "ab" * 32, "/models/small")
    tuned = store.model_id("sha256:" + "cd" * 32, "/models/tuned")
    runs = [store.create_run("eval", {"model": "/models/small"}).id for _ in range(4)]
    add_episodes(store, runs[0], small, "os", "dev", [1, 0, 1, 0])
    add_episodes(store, runs[1], tuned, "os", "dev", [1, 1, 1, 0])
    add_episodes(store, runs[2], tuned, "os", "test", [1, 0, 0])
    add_episodes(store, runs[3], tuned, "os", "dev", [1, 1, 1, 1], first=2)
    store.engine.dispose()
    return Evals(db, *runs)


# -- 8. filters that silently match nothing --------------------------------------------------------------------------

STATUSES = (
    "completed, round_limit, episode_timeout, invalid_action, command_timeout, sandbox_broken, tampered, env_error"
)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--status", "bogus"], f"--status bogus: expected one of {STATUSES}"),
        (["--env", "web"], f"--env web: expected one of {', '.join(environment_names())}"),
        (["--min-score", "2"], "--min-score 2.0: expected a score from 0 to 1"),
        (["--min-score", "nan"], "--min-score nan: expected a score from 0 to 1"),
        (["--min-score", "-0.5"], "--min-score -0.5: expected a score from 0 to 1"),
    ],
    ids=["status", "env", "score above 1", "score nan", "score below 0"],
)
def test_an_export_filter_outside_its_vocabulary_is_refused(
    evals: Evals, tmp_path: Path, run_cli: Run, option: list[str], expected: str
) -> None:
    out = tmp_path / "episodes.jsonl"
    code, _, err = run_cli("export", evals.a, "--db", str(evals.db), "--out", str(out), *option)
    assert one_line_error(code, err) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]  # nothing written, not even a partial file


def test_a_known_status_exports_its_episodes_only(evals: Evals, run_cli: Run) -> None:
    code, out, err = run_cli("export", evals.a, "--db", str(evals.db), "--status", "round_limit")
    assert code == 0, err
    assert [(r["task"], r["status"], r["score"]) for r in map(json.loads, out.splitlines())] == [
        ("os-dev-1", "round_limit", 0.0), ("os-dev-3", "round_limit", 0.0)]  # fmt: skip
    assert err.strip() == "2 episode(s) exported"


# -- 9. compare: nothing in common, paired differences, two stores ---------------------------------------------------


def test_compare_refuses_runs_that_share_no_task(evals: Evals, run_cli: Run) -> None:
    code, out, err = run_cli("compare", evals.a, evals.test, "--db", str(evals.db))
    assert one_line_error(code, err) == (
        f"nothing to compare: no task was scored in more than one column ({evals.a[:8]} small@abababab: os/dev 4 "
        f"task(s); {evals.test[:8]} tuned@cdcdcdcd: os/test 3 task(s))"
    )
    assert out == ""


def test_compare_gives_the_paired_difference_with_reports_interval(evals: Evals, run_cli: Run) -> None:
    code, out, err = run_cli("compare", evals.a, evals.b, "--db", str(evals.db), "--json")
    assert code == 0 and err == "", err
    report = json.loads(out)
    expected = paired_ci([{"os-dev-0": 1, "os-dev-1": 1, "os-dev-2": 1, "os-dev-3": 0}],
                         [{"os-dev-0": 1, "os-dev-1": 0, "os-dev-2": 1, "os-dev-3": 0}])  # fmt: skip
    assert expected.method == "newcombe-paired" and expected.estimate == 0.25
    assert report["differences"] == [{
        "env": "os", "split": "dev", "column": 1, "against": 0,
        "compared": f"{evals.b[:8]} tuned@cdcdcdcd − {evals.a[:8]} small@abababab", **expected.to_json(),
    }]  # fmt: skip
    assert (report["shared_tasks"], report["scored_tasks"]) == (4, 4)
    code, out, _ = run_cli("compare", evals.a, evals.b, "--db", str(evals.db))
    (row,) = [line for line in out.splitlines() if "−" in line]
    assert f"{expected.describe(signed=True)} │ 4     │ newcombe-paired" in row, out


def test_compare_warns_when_the_runs_share_only_some_tasks(evals: Evals, run_cli: Run) -> None:
    code, out, err = run_cli("compare", evals.a, evals.some, "--db", str(evals.db), "--json")
    assert code == 0
    assert err.strip() == ("warning: the columns share 2 of the 6 scored tasks; each mean is over its own tasks, each "
                           "paired difference over the tasks its two columns share")  # fmt: skip
    [difference] = json.loads(out)["differences"]
    # Over the two shared tasks only: os-dev-2 (1 in both) and os-dev-3 (0, then 1).
    expected = paired_ci([{"os-dev-2": 1, "os-dev-3": 1}], [{"os-dev-2": 1, "os-dev-3": 0}])
    assert (expected.n, expected.estimate) == (2, 0.5)
    assert {k: difference[k] for k in ("estimate", "low", "high", "n", "method")} == expected.to_json()


def test_compare_reads_a_run_from_another_store(evals: Evals, tmp_path: Path, run_cli: Run) -> None:
    other = tmp_path / "other.db"
    shutil.copy(evals.db, other)
    with_b = run_cli("compare", evals.a, f"{other}:{evals.b[:6]}", "--db", str(evals.db), "--json")
    one_store = run_cli("compare", evals.a, evals.b, "--db", str(evals.db), "--json")
    assert with_b[0] == 0, with_b[2]
    report, single = json.loads(with_b[1]), json.loads(one_store[1])
    assert [c["db"] for c in report["columns"]] == [str(evals.db), str(other)]
    assert [c["label"] for c in report["columns"]] == [f"runs.db:{evals.a[:8]} small@abababab",
                                                       f"other.db:{evals.b[:8]} tuned@cdcdcdcd"]  # fmt: skip
    assert [{k: v for k, v in d.items() if k != "compared"} for d in report["differences"]] == [
        {k: v for k, v in d.items() if k != "compared"} for d in single["differences"]]  # fmt: skip
    code, _, err = run_cli("compare", evals.a, f"{other}:", "--db", str(evals.db))
    expected = f"{other}:: expected RUN or STORE:RUN (e.g. {other}:3f2a), a run id after the colon"
    assert one_line_error(code, err) == expected
    code, _, err = run_cli("compare", evals.a, f"{tmp_path / 'none.db'}:{evals.b}", "--db", str(evals.db))
    assert one_line_error(code, err).startswith(f"{tmp_path / 'none.db'}: no such store")


# -- 10. an evolution's exports: a log per split, roles, usage and readable names ------------------------------------


LABELS = {"base": "base", "expert": "expert shell", "final": "CycleQD final", "merge": "naive merge"}  # by role


@dataclass(frozen=True)
class Evolution:
    db: Path
    run: str
    hashes: dict[str, str]  # role → the model's short hash


@pytest.fixture
def evolution(tmp_path: Path) -> Evolution:
    """An evolution of one task (shell, on os): the base, the expert (2 selection episodes, both passed; 3 test
    episodes, all failed), a child that is also the final model (the final merge equal to it), and the naive merge."""
    db = tmp_path / "evolve.db"
    store = open_store(db)
    tasks = [{"name": "shell", "env": "os", "test_split": "test"}]
    run = store.create_run("evolve", {"base": "default", "tasks": tasks})
    evo = EvolutionStore(store, run.id)
    models = {
        "base": store.model_id("sha256:" + "0b" * 32, "/ckpt/base"),
        "expert": store.model_id("sha256:" + "e1" * 32, "/ckpt/expert-shell"),
        "final": store.model_id("genome:" + "f1" * 32, "/runs/x/children/f1f1", "f1" * 32),
        "merge": store.model_id("genome:" + "4e" * 32, "/runs/x/children/4e4e", "4e" * 32),
    }
    evo.add_candidate("expert", 0, 0, model_id=models["expert"])
    evo.add_candidate("child", 1, 0, model_id=models["final"])
    evo.add_candidate("child", 1, 1)  # never evaluated: no model, no episodes
    for kind in ("base", "merge", "final"):
        evo.add_candidate(kind, 2, 0, model_id=models[kind])
    add_episodes(store, run.id, models["expert"], "os", "dev", [1, 1], tokens=(300, 20))
    add_episodes(store, run.id, models["expert"], "os", "test", [0, 0, 0], tokens=(200, 10))
    add_episodes(store, run.id, models["final"], "os", "dev", [1, 0])
    for role in ("base", "merge", "final"):
        add_episodes(store, run.id, models[role], "os", "test", [1, 0, None])
    store.engine.dispose()
    return Evolution(db, run.id, {"base": "0b" * 4, "expert": "e1" * 4, "final": "f1" * 4, "merge": "4e" * 4})


def test_jsonl_and_csv_rows_say_each_models_role(evolution: Evolution, tmp_path: Path, run_cli: Run) -> None:
    code, out, err = run_cli("export", evolution.run, "--db", str(evolution.db))
    assert code == 0, err
    rows = {(r["role"], r["model_label"], r["split"]) for r in map(json.loads, out.splitlines())}
    base, expert, final, merge = (f"{name}@{evolution.hashes[role]}" for role, name in LABELS.items())
    # The final merge equals a child: its selection (dev) episodes ran as that child, yet the model is the final.
    assert rows == {("base", base, "test"), ("expert", expert, "dev"), ("expert", expert, "test"),
                    ("final", final, "dev"), ("final", final, "test"), ("merge", merge, "test")}  # fmt: skip
    code, out, err = run_cli("export", evolution.run, "--db", str(evolution.db), "--format", "csv")
    assert {r["role"] for r in csv.DictReader(out.splitlines())} == {"base", "expert", "final", "merge"}


def test_an_eval_runs_rows_have_no_role(evals: Evals, run_cli: Run) -> None:
    code, out, err = run_cli("export", evals.a, "--db", str(evals.db))
    assert {(r["role"], r["model_label"], r["model"]) for r in map(json.loads, out.splitlines())} == {
        (None, "small@abababab", "/models/small")}  # fmt: skip


def test_export_refuses_a_candidate_the_evolution_does_not_have(evolution: Evolution, tmp_path: Path,
                                                                run_cli: Run) -> None:  # fmt: skip
    for bad in ("99", "best"):
        code, _, err = run_cli("export", evolution.run, "--db", str(evolution.db), "--candidate", bad)
        assert one_line_error(code, err) == (f"--candidate {bad}: evolution {evolution.run} has no such candidate; "
                                             "expected all, final or one of its candidate ids (1–6)")  # fmt: skip


def test_inspect_logs_keep_splits_apart_with_roles_usage_and_names(evolution: Evolution, tmp_path: Path,
                                                                   run_cli: Run) -> None:  # fmt: skip
    from inspect_ai.log import read_eval_log

    out = tmp_path / "logs"
    code, _, err = run_cli("export", evolution.run, "--db", str(evolution.db), "--format", "inspect", "--out", str(out))
    assert code == 0, err
    logs = {}
    for path in out.glob("*.eval"):
        log = read_eval_log(str(path))
        logs[(log.eval.model, log.eval.dataset.name)] = log
    base, expert, final, merge = (f"{name}@{evolution.hashes[role]}" for role, name in LABELS.items())
    assert sorted(logs) == sorted([(base, "builtin/test"), (expert, "builtin/dev"), (expert, "builtin/test"),
                                   (final, "builtin/dev"), (final, "builtin/test"),
                                   (merge, "builtin/test")])  # fmt: skip
    dev, test = logs[(expert, "builtin/dev")], logs[(expert, "builtin/test")]
    # The expert passed both selection tasks and failed the three held-out ones: two means, not one blended 0.4.
    assert (dev.results.scores[0].metrics["mean"].value, test.results.scores[0].metrics["mean"].value) == (1.0, 0.0)
    assert (dev.eval.task, test.eval.task) == ("cycleqd/os/dev", "cycleqd/os/test")
    assert (dev.eval.metadata["role"], dev.eval.tags, dev.eval.metadata["model_reference"]) == (
        "expert", ["expert"], "/ckpt/expert-shell")  # fmt: skip
    usage = test.stats.model_usage[expert]
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (600, 30, 630)
    assert (dev.stats.model_usage[expert].input_tokens, dev.stats.model_usage[expert].output_tokens) == (600, 40)
    assert {s.metadata["role"] for s in test.samples} == {"expert"}
    assert {tuple(s.model_usage) for s in test.samples} == {(expert,)}
