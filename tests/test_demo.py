"""`cycleqd demo` end to end at a tiny budget: SFT experts, an evolution, the final table; a second run reuses
what the first made."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cli_process import CYCLEQD

# One dev task per environment: the evolution then plans 15 dev episodes, too few for vLLM's start to pay (serving/
# resolve.py), so it runs on transformers serve and the test spends no minute starting vLLM. Batched, the default:
# with --deterministic (every linear in 16-row tiles) this test took 514 s; the mode is tested on both servers in
# test_deterministic_decoding, the fixed rows measured once in test_measured_once.
TINY = ["--sft-tasks", "2", "--sft-epochs", "1", "--dev-limit", "1", "--test-limit", "2", "--generations", "1",
        "--max-tokens", "32", "--rounds", "1", "--db-train", "4", "--seeds", "1"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(2100)  # on a cold cache it fine-tunes three experts: > 600 s on a loaded CI machine
def test_the_demo_runs_end_to_end_and_reuses_its_cache(docker_engine, default_model, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "demo.db"
    wide = {**os.environ, "COLUMNS": "200"}  # lines as printed, not wrapped at a pipe's 80 columns
    first = subprocess.run([CYCLEQD, "demo", *TINY, "--db", str(db)], capture_output=True, text=True, timeout=1800,
                           env=wide)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 train tasks × 1 epochs per environment" in first.stdout and "estimate on 2 cores: " in first.stdout
    for row in ("base", "expert os", "expert db", "expert coding", "naive merge", "random search (best of 1)",
                "all-data SFT", "CycleQD final"):  # fmt: skip
        assert row in first.stdout
    assert "final − random search (best of 1) (average)" in first.stdout
    # one seed: a second would cost CI another evolution and vLLM start; the table over seeds is
    # tests/test_score_intervals.py's, the loop over seeds test_the_demo_evolves_once_per_seed's
    if "fine-tuning" in first.stdout:  # a cold cache: the all-data model is trained beside the experts
        assert re.search(r"baseline: all-data SFT \(\d+ trajectories of os, db, coding\)", first.stdout)
    assert "stage times: data" in first.stdout and "evolution, search baseline and the final table" in first.stdout
    assert "the table's test splits: in-family" in first.stdout and "not the paper's setting: " in first.stdout
    second = subprocess.run([CYCLEQD, "demo", *TINY, "--db", str(db)], capture_output=True, text=True, timeout=300,
                            env=wide)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "this demo already ran" in second.stdout and "CycleQD final" in second.stdout
    assert "fine-tuning" not in second.stdout  # the experts came from the cache


def demo_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list, object]:
    """run_demo with its heavy stages replaced (the store, the config and the resume decision stay real)."""
    from types import SimpleNamespace

    from cycleqd.demo import command

    folders = {}
    for name in ("base", "os", "db", "coding"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        folders[name] = tmp_path / name
    for env in ("os", "db", "coding"):
        (tmp_path / f"suite-{env}").mkdir()
        (tmp_path / f"suite-{env}" / "in-family.json").write_text("[]")
    calls: list[tuple] = []
    monkeypatch.setattr(command, "default_checkpoint", lambda: SimpleNamespace(path=folders["base"]))
    monkeypatch.setattr(command, "demo_suites", lambda *a: {e: tmp_path / f"suite-{e}" for e in ("os", "db", "coding")})
    monkeypatch.setattr(command, "demo_experts", lambda *a: {e: folders[e] for e in ("os", "db", "coding")})
    monkeypatch.setattr(command, "all_data_sft", lambda *a: folders["base"])
    monkeypatch.setattr(
        command, "run_evolve_command", lambda config, db, resume, *a, **kw: calls.append((config, resume)) or 0
    )
    return calls, command


def test_a_rerun_of_an_interrupted_demo_continues_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from cycleqd.db.schema import RunStatus
    from cycleqd.db.store import open_store
    from cycleqd.errors import UserError

    calls, command = demo_parts(tmp_path, monkeypatch)
    db = tmp_path / "demo.db"
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    budget = command.DemoBudget()
    assert command.run_demo(budget, db, quiet, quiet) == 0
    assert calls[-1][1] is None  # nothing earlier: a new run with the config
    config = calls[-1][0]
    store = open_store(db)
    other = store.create_run("evolve", {**config.snapshot(), "generations": 99})  # another config: never resumed
    store.set_run_status(other.id, RunStatus.INTERRUPTED)
    mine = store.create_run("evolve", config.snapshot())
    store.set_run_status(mine.id, RunStatus.INTERRUPTED)
    assert command.run_demo(budget, db, quiet, quiet) == 0
    assert calls[-1] == (None, mine.id)  # the interrupted run with this config is continued, not a new one
    store.set_run_status(mine.id, RunStatus.RUNNING)
    with pytest.raises(UserError, match=f"run {mine.id} of this demo is marked running"):
        command.run_demo(budget, db, quiet, quiet)
    store.set_run_status(mine.id, RunStatus.COMPLETED)
    assert command.earlier_run(store, config).id == mine.id  # type: ignore[union-attr]
    assert command.earlier_run(store, type(config)(**{**config.__dict__, "bins": 7})) is None


def test_the_demo_evolves_once_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from rich.console import Console

    calls, command = demo_parts(tmp_path, monkeypatch)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    assert command.run_demo(replace(command.DemoBudget(), seeds=3), tmp_path / "d.db", quiet, quiet) == 0
    assert [config.seed for config, _ in calls] == [0, 1, 2]
    assert command.PRESETS["night"].seeds == 3 and command.PRESETS["default"].seeds == 3
    one, three = (command.estimate(replace(command.DemoBudget(), seeds=n, deterministic=True)) for n in (1, 3))
    assert three.evolution_s == 3 * one.evolution_s and three.experts_s == one.experts_s  # experts trained once
    # deterministic: six fixed rows once, two rows per seed; batched (the default): all eight in every seed
    batched = command.estimate(replace(command.DemoBudget(), seeds=3))
    assert three.final_s / one.final_s == pytest.approx((6 + 3 * 2) / (6 + 2))
    assert batched.final_s / three.final_s == pytest.approx(3 * 8 / (6 + 3 * 2))


def test_the_demo_command_passes_its_budget_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cycleqd import cli
    from cycleqd.demo import command

    seen = []
    monkeypatch.setattr(command, "run_demo", lambda budget, *a, **kw: seen.append(budget) or 0)
    done = CliRunner().invoke(cli.cli, ["demo", "--test-kind", "transfer", "--seeds", "2", "--generations", "4"])
    assert done.exit_code == 0, done.output
    assert (seen[0].test_kind, seen[0].seeds, seen[0].generations) == ("transfer", 2, 4)
    assert seen[0].max_tokens == command.PRESETS["default"].max_tokens  # the rest is the preset's
    assert not seen[0].deterministic and CliRunner().invoke(cli.cli, ["demo", "--deterministic"]).exit_code == 0
    assert seen[1].deterministic
    bad = CliRunner().invoke(cli.cli, ["demo", "--test-kind", "test"])
    assert bad.exit_code == 2 and "'test' is not one of 'in-family', 'transfer'" in bad.output


def test_a_dry_run_prints_the_plan_and_the_estimate_and_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from click.testing import CliRunner
    from rich.console import Console

    from cycleqd import cli
    from cycleqd.demo import command
    from cycleqd.demo.power import describe_power
    from cycleqd.serving import default_model
    from cycleqd.suite import generate

    def made(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a dry run made something")

    for module, name in [(command, "default_checkpoint"), (command, "demo_suites"), (command, "demo_experts"),
                         (command, "all_data_sft"), (command, "open_store"), (command, "run_evolve_command"),
                         (generate, "build_images"), (default_model, "convert_gguf")]:  # fmt: skip
        monkeypatch.setattr(module, name, made)
    monkeypatch.setattr(cli, "console", Console(width=1000))  # each line whole, on CliRunner's sys.stdout
    db, cache = tmp_path / "demo.db", tmp_path / "cache"
    done = CliRunner().invoke(cli.cli, ["demo", "--dry-run", "--generations", "4", "--seeds", "1", "--db", str(db)],
                              env={"CYCLEQD_CACHE": str(cache)})  # fmt: skip
    assert done.exit_code == 0, done.output
    budget = replace(command.DemoBudget(), generations=4, seeds=1)
    lines = done.output.splitlines()
    assert lines[0] == f"cycleqd demo — {budget.describe()}"
    assert lines[1] == "not the paper's setting: " + "; ".join(budget.deviations())
    assert lines[2] == command.estimate(budget).describe() and lines[2].startswith("estimate on 2 cores: data ")
    assert lines[3] == describe_power(budget.test_limit) and "(average) ±0.11 (75 tasks" in lines[3]
    assert lines[4:] == [f"dry run: nothing was made; to run it: cycleqd demo --generations 4 --seeds 1 --db {db}"]
    assert list(tmp_path.iterdir()) == []  # no store, no cache


def test_the_command_that_resumes_a_demo_names_what_differs_from_its_preset() -> None:
    from dataclasses import replace

    from cycleqd.demo.command import PRESETS, demo_command

    assert demo_command(PRESETS["default"], Path("d.db")) == "cycleqd demo --db d.db"
    night = replace(PRESETS["night"], seeds=1, sft_learning_rate=3e-5)
    resume = "cycleqd demo --budget night --sft-lr 3e-05 --seeds 1 --db 'my demo.db'"
    assert demo_command(night, Path("my demo.db")) == resume
    transfer = replace(PRESETS["default"], test_kind="transfer")
    assert demo_command(transfer, Path("d.db")) == "cycleqd demo --test-kind transfer --db d.db"
    deterministic = replace(PRESETS["default"], deterministic=True, seeds=2)
    assert demo_command(deterministic, Path("d.db")) == "cycleqd demo --seeds 2 --deterministic --db d.db"


def test_a_demo_interrupted_in_its_evolution_names_the_demo_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    from dataclasses import replace

    from rich.console import Console

    from cycleqd.errors import RunInterrupted
    from cycleqd.evolution import command as evolve_command
    from cycleqd.evolution import run

    _, command = demo_parts(tmp_path, monkeypatch)
    monkeypatch.setattr(command, "run_evolve_command", evolve_command.run_evolve_command)  # the real one again

    def stopped(*_args: object, **_kwargs: object) -> None:
        raise RunInterrupted("abc123")  # as evolve stops on Ctrl-C or SIGTERM, its run marked interrupted

    monkeypatch.setattr(run, "evolve", stopped)
    out, err = io.StringIO(), io.StringIO()
    db = tmp_path / "d.db"
    with pytest.raises(SystemExit) as ended:
        command.run_demo(replace(command.DemoBudget(), seeds=1), db, Console(file=out), Console(file=err, width=1000))
    assert ended.value.code == RunInterrupted.exit_status
    # the demo run again continues that run, then the rest; `cycleqd evolve --resume abc123` would finish one seed
    assert err.getvalue() == f"interrupted; resume with: cycleqd demo --seeds 1 --db {db}\n"


# The demo's CLI with its first stages replaced: the base model is a folder, and the data stage blocks as the real
# one does, in an image build (blocking code) or in the DB suite's generation (inside asyncio.run, its sandbox
# released on the way out). "data stage" on stdout says it has begun.
BLOCKED_DEMO = """
import asyncio, sys, time
from pathlib import Path
from types import SimpleNamespace

from cycleqd import cli
from cycleqd.demo import command

how, db = sys.argv[1], sys.argv[2]


async def generate():
    try:
        print("data stage", flush=True)
        await asyncio.sleep(60)
    finally:
        await asyncio.to_thread(time.sleep, 0.1)  # a sandbox's removal, off the loop


def blocked(*_args):
    if how == "asyncio":
        asyncio.run(generate())
    else:
        print("data stage", flush=True)
        time.sleep(60)
    raise SystemExit("the data stage was not interrupted")


command.default_checkpoint = lambda: SimpleNamespace(path=Path(db).parent)
command.demo_suites = blocked
sys.argv = ["cycleqd", "demo", "--seeds", "1", "--db", db]
cli.main()
"""


@pytest.mark.parametrize("how", ["blocking", "asyncio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_demo_interrupted_in_its_data_stage_says_how_to_resume_it(
    tmp_path: Path, how: str, signum: signal.Signals
) -> None:
    import sys

    from cycleqd.errors import RunInterrupted

    db = tmp_path / "demo.db"
    env = {**os.environ, "CYCLEQD_CACHE": str(tmp_path / "cache"), "COLUMNS": "1000"}
    # Ctrl-C reaches a child of a terminal with SIGINT at its default; one started from a background shell (as CI
    # may be) inherits it ignored, and would not be interrupted at all.
    demo = subprocess.Popen([sys.executable, "-c", BLOCKED_DEMO, how, str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        assert demo.stdout is not None
        while "data stage" not in (line := demo.stdout.readline()):
            assert line, demo.stderr.read() if demo.stderr else ""  # ended before its data stage
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == RunInterrupted.exit_status == 130, err
    assert "Traceback" not in err and "Aborted" not in err, err
    assert err.splitlines() == [
        f"interrupted during the demo's data stage (its task suites); resume with: cycleqd demo --seeds 1 --db {db}"
    ]
    assert not db.exists()
