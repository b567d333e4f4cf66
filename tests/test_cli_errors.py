"""Bad input at the command line, as a new user types it: one line naming the thing and the fix, exit status 2, no
traceback, nothing created beside the store, no run row. And Ctrl-C: the run ends within seconds, marked
interrupted, and --resume completes it with exactly the planned episodes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cycleqd.db import open_store
from cycleqd.db.schema import RunStatus
from cycleqd.eval_request import EvalRequest

CLI = [sys.executable, "-m", "cycleqd.cli"]


def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def store_with_a_run(tmp_path: Path) -> tuple[Path, str]:
    """A real store holding one eval run (limit 2 on db), as a finished `cycleqd eval` leaves it."""
    path = tmp_path / "store.db"
    store = open_store(path)
    run = store.create_run("eval", EvalRequest(tasks=("db",), limit=2).snapshot())
    store.set_run_status(run.id, RunStatus.INTERRUPTED)
    store.engine.dispose()
    return path, run.id


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])


BAD_EVAL_OPTIONS = [
    (["--tasks", "web"], ["unknown environment 'web'", "choose from os, db, coding"]),
    (["--concurrency", "0"], ["--concurrency 0", "from 1 to 1,024"]),
    (["--limit", "0"], ["--limit 0", "whole number from 1"]),
    (["--repeats", "-1"], ["--repeats -1", "from 1 to 1,000"]),
    (["--rounds", "0"], ["--rounds 0", "from 1 to 1,000"]),
    (["--model", "/nonexistent", "--tasks", "db", "--limit", "1"], ["/nonexistent", "checkpoint folder"]),
]


@pytest.mark.parametrize(("options", "expected"), BAD_EVAL_OPTIONS, ids=lambda v: " ".join(v) if v else "")
def test_a_bad_eval_option_is_one_line_and_leaves_the_store_alone(
    store_with_a_run: tuple[Path, str], options: list[str], expected: list[str]
) -> None:
    path, _ = store_with_a_run
    before, size = files(path.parent), path.stat().st_size
    done = run_cli("eval", *options, "--db", str(path), cwd=path.parent)
    assert_one_line_error(done, *expected)
    assert files(path.parent) == before and path.stat().st_size == size  # no -wal, -shm or lock; nothing written
    assert len(open_store(path).list_runs()) == 1  # no run row


def test_a_bad_option_creates_no_store(tmp_path: Path) -> None:
    done = run_cli("eval", "--tasks", "web", "--db", str(tmp_path / "new.db"), cwd=tmp_path)
    assert_one_line_error(done, "unknown environment 'web'")
    assert files(tmp_path) == set()


BAD_TRAINING_OPTIONS = [
    (["sft", "--env", "coding", "--epochs", "0"], ["--epochs 0", "at least 1"]),
    (["sft", "--env", "coding", "--lr", "0"], ["--lr 0.0", "positive"]),
    (["sft", "--env", "coding", "--limit", "0"], ["--limit 0", "at least 1"]),
    (["demo", "--eval-limit", "0"], ["--dev-limit or --eval-limit 0", "positive"]),
    (["demo", "--sft-epochs", "0"], ["--sft-epochs 0", "positive"]),
    (["demo", "--seeds", "0"], ["--seeds 0", "positive"]),
]


@pytest.mark.parametrize(("args", "expected"), BAD_TRAINING_OPTIONS, ids=lambda v: " ".join(v) if v else "")
def test_a_bad_training_option_is_one_line_and_makes_nothing(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    """`sft --epochs 0` trained nothing and published a checkpoint with a loss of nan."""
    done = run_cli(*args, "--out" if args[0] == "sft" else "--db", str(tmp_path / "made"), cwd=tmp_path)
    assert_one_line_error(done, *expected)
    assert files(tmp_path) == set()


def test_an_endpoint_with_nothing_listening_is_one_line(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1#some-model"
    done = run_cli("eval", "--model", endpoint, "--tasks", "db", "--limit", "1", "--db", str(tmp_path / "x.db"),
                   cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, "cannot reach http://127.0.0.1:")
    assert files(tmp_path) == set()


READ_ONLY = [["runs"], ["show", "abc"], ["report", "abc"], ["tui"], ["eval", "--resume", "abc"]]


@pytest.mark.parametrize("command", READ_ONLY)
def test_a_missing_store_is_one_line_and_is_not_created(tmp_path: Path, command: list[str]) -> None:
    done = run_cli(*command, "--db", str(tmp_path / "missing.db"), cwd=tmp_path)
    assert_one_line_error(done, "missing.db: no such store")
    assert files(tmp_path) == set()


@pytest.mark.parametrize("command", [["runs"], ["show", "abc"], ["eval", "--tasks", "db"], ["eval", "--resume", "a"]])
def test_a_file_that_is_not_sqlite_is_one_line(tmp_path: Path, command: list[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my shopping list\n")
    done = run_cli(*command, "--db", str(notes), cwd=tmp_path)
    assert_one_line_error(done, "notes.txt: not an SQLite database")
    assert files(tmp_path) == {"notes.txt"} and notes.read_text() == "my shopping list\n"


@pytest.mark.parametrize("command", [["runs"], ["show", "RUN"]])
def test_a_corrupted_store_is_one_line(store_with_a_run: tuple[Path, str], command: list[str]) -> None:
    path, run_id = store_with_a_run
    data = bytearray(path.read_bytes())
    data[100:] = bytes(range(256)) * ((len(data) - 100) // 256) + bytes((len(data) - 100) % 256)
    path.write_bytes(bytes(data))
    before = files(path.parent)
    done = run_cli(*[run_id if c == "RUN" else c for c in command], "--db", str(path), cwd=path.parent)
    assert_one_line_error(done, "store")
    assert files(path.parent) == before and path.read_bytes() == bytes(data)


def test_read_only_commands_leave_nothing_beside_the_store(store_with_a_run: tuple[Path, str]) -> None:
    path, run_id = store_with_a_run
    before, content = files(path.parent), path.read_bytes()
    assert run_cli("runs", "--db", str(path), cwd=path.parent).returncode == 0
    shown = run_cli("show", run_id, "--db", str(path), cwd=path.parent)
    assert shown.returncode == 0 and f"run {run_id}: eval, interrupted" in shown.stdout
    assert run_cli("compare", run_id, "--db", str(path), cwd=path.parent).returncode == 0
    assert files(path.parent) == before == {"store.db"} and path.read_bytes() == content


def test_options_that_conflict_with_a_resumed_run_are_refused(store_with_a_run: tuple[Path, str]) -> None:
    path, run_id = store_with_a_run
    done = run_cli("eval", "--resume", run_id, "--limit", "3", "--db", str(path), cwd=path.parent)
    assert_one_line_error(done, f"--limit 3 conflicts with run {run_id}", "--limit 2", "drop the option")
    done = run_cli("eval", "--resume", run_id, "--tasks", "os,db", "--db", str(path), cwd=path.parent)
    assert_one_line_error(done, "--tasks os,db conflicts", "--tasks db")


def test_nan_in_an_evolve_config_is_one_line(tmp_path: Path) -> None:
    for expert in ("e1", "e2"):
        (tmp_path / expert).mkdir()
        (tmp_path / expert / "config.json").write_text("{}")
    config = tmp_path / "evolve.yaml"
    config.write_text("base: default\ntasks:\n  - {name: os, env: os, expert: e1}\n  - {name: db, env: db, "
                      "expert: e2}\ncrossover: {sigma: .nan}\n")  # fmt: skip
    before = files(tmp_path)
    done = run_cli("evolve", "--config", str(config), "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert_one_line_error(done, "evolve.yaml: field 'crossover.sigma': expected a finite number, got nan")
    assert files(tmp_path) == before


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    done = run_cli("-v", "eval", "--tasks", "web", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" in done.stderr and "UnknownEnvironmentError" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown environment 'web'")


@pytest.mark.slow
def test_a_model_the_endpoint_does_not_serve_is_one_line(tserve, tmp_path: Path) -> None:  # noqa: ANN001
    done = run_cli("eval", "--model", f"{tserve.base_url}#no-such-model", "--tasks", "db", "--limit", "1",
                   "--db", str(tmp_path / "x.db"), cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, "no-such-model")
    assert files(tmp_path) == set()


def start_eval(db: Path, cwd: Path, sigint: Any) -> subprocess.Popen[str]:
    """`cycleqd eval` of four coding tasks as a child whose SIGINT disposition is `sigint`."""
    args = ["eval", "--tasks", "coding", "--limit", "4", "--max-tokens", "48", "--concurrency", "2", "--db", str(db)]
    return subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))  # fmt: skip


def send_signals(
    child: subprocess.Popen[str], ready: Callable[[], bool], signum: int, again_after_s: float | None = None
) -> tuple[str, str, float]:
    """Send `signum` once `ready()` (and again `again_after_s` later, as an impatient person would); the child's
    output and how long it took to end after the first signal."""
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and child.poll() is None and not ready():
            time.sleep(0.5)
        assert child.poll() is None, child.communicate()
        sent = time.monotonic()
        os.kill(child.pid, signum)
        if again_after_s is not None:
            time.sleep(again_after_s)
            os.kill(child.pid, signum)
        out, err = child.communicate(timeout=60)
        return out, err, time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()


def episodes_stored(db: Path) -> bool:
    return db.exists() and any(len(open_store(db).episodes(r.id)) for r in open_store(db).list_runs())


@pytest.mark.slow
def test_ctrl_c_interrupts_within_seconds_and_resume_completes_exactly(default_model, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "interrupted.db"
    # A child started from a background shell inherits SIGINT ignored; a terminal's Ctrl-C reaches a default one.
    child = start_eval(db, tmp_path, signal.SIG_DFL)
    # Pressed twice: the second press, while the episodes release their sandboxes, is answered with a line (it
    # raised a KeyboardInterrupt inside a running task: tracebacks under the resume line).
    out, err, took = send_signals(child, lambda: episodes_stored(db), signal.SIGINT, again_after_s=0.1)
    assert child.returncode == 130 and "Traceback" not in out + err and "never retrieved" not in err, err
    assert "stopping: the running episodes are releasing" in err
    assert took < 5, f"Ctrl-C took {took:.1f} s to end the run"
    (run,) = open_store(db).list_runs()
    assert run.status == RunStatus.INTERRUPTED and f"cycleqd eval --resume {run.id}" in err
    stored = len(open_store(db).episodes(run.id))
    assert 1 <= stored < 4
    done = subprocess.run([*CLI, "eval", "--resume", run.id, "--db", str(db), "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    episodes = open_store(db).episodes(run.id)
    assert len(episodes) == 4 and len({(e.task_id, e.repeat) for e in episodes}) == 4
    assert open_store(db).get_run(run.id).status == RunStatus.COMPLETED


@pytest.mark.slow
def test_sigterm_ends_an_eval_whose_sigint_is_ignored(default_model, tmp_path: Path) -> None:  # noqa: ANN001
    """`cycleqd eval … &` in a script: the child inherits SIGINT ignored. SIGTERM was turned into a SIGINT to
    ourselves, which then did nothing, and the run went on. It must end as Ctrl-C ends it."""
    db = tmp_path / "terminated.db"
    child = start_eval(db, tmp_path, signal.SIG_IGN)
    out, err, took = send_signals(child, lambda: db.exists() and bool(open_store(db).list_runs()), signal.SIGTERM)
    assert child.returncode == 130 and "Traceback" not in out + err, err
    assert took < 10, f"SIGTERM took {took:.1f} s to end the run"
    (run,) = open_store(db).list_runs()
    assert run.status == RunStatus.INTERRUPTED and f"cycleqd eval --resume {run.id}" in err


# -- what a new user met on a fresh clone: each was a traceback or a silent wrong answer -----------------------------


def test_an_unknown_task_id_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    done = run_cli("eval", "--tasks", "db", "--task-ids", "nope", "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert_one_line_error(done, "--task-ids: no task 'nope'", "cycleqd tasks")
    assert files(tmp_path) == set()


def test_the_limit_applies_after_the_task_ids() -> None:
    from cycleqd.eval.tasks import load_eval_tasks

    third = load_eval_tasks(["db"], "builtin", "dev", None)[2].key
    # --limit 1 kept the first task only, and then the third was reported missing
    chosen = EvalRequest(tasks=("db",), task_ids=(third,), limit=1).planned_tasks()
    assert [t.key for t in chosen] == [third]
    both = EvalRequest(tasks=("db", "os"), limit=1).planned_tasks()
    assert [t.env for t in both] == ["db", "os"]


def test_vllm_that_is_not_installed_says_how_to_install_it(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this Python")
    # The vLLM Python is this one (without vLLM): the server cannot start, whichever way serving launches it.
    env = {**os.environ, "CYCLEQD_VLLM_PYTHON": sys.executable}
    args = ["eval", "--model", "vllm/default", "--tasks", "db", "--limit", "1", "--db", str(tmp_path / "x.db")]
    done = subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(done, "pip install 'cycleqd[vllm]'", "--server transformers")
    assert files(tmp_path) == set()


def test_a_dead_vllm_server_for_a_missing_module_becomes_the_install_line() -> None:
    from cycleqd.errors import UserError, explained
    from cycleqd.serving.errors import ServerDiedError

    died = ServerDiedError("the model server exited (code 1) while starting; its log x.log:\n"
                           "ModuleNotFoundError: No module named 'vllm'")  # fmt: skip
    assert isinstance(explained(died, "OPENAI_API_KEY"), UserError)
    assert "pip install 'cycleqd[vllm]'" in str(explained(died, "OPENAI_API_KEY"))
    other = ServerDiedError("the model server exited (code 1) while starting; its log x.log:\nOut of memory")
    assert explained(other, "OPENAI_API_KEY") is other


@pytest.fixture
def refusing_endpoint() -> Any:
    """A real HTTP server that answers every request 401, as an OpenAI-compatible API does without a key."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_401_with_the_key_unset_says_which_variable(refusing_endpoint: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    args = ["eval", "--model", f"{refusing_endpoint}#gpt-4o-mini", "--tasks", "db", "--limit", "1", "--db",
            str(tmp_path / "x.db")]  # fmt: skip
    done = subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(done, "HTTP 401", "$OPENAI_API_KEY is not set")
    assert files(tmp_path) == set()
    # With a key set (a wrong one), the 401 is the endpoint's word alone.
    done = subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "OPENAI_API_KEY": "sk-wrong"})  # fmt: skip
    assert_one_line_error(done, "HTTP 401")
    assert "is not set" not in done.stderr


def test_export_refuses_a_missing_folder_and_an_unknown_environment(store_with_a_run: tuple[Path, str]) -> None:
    path, run_id = store_with_a_run
    done = run_cli("export", run_id, "--out", "/nonexistent/x.jsonl", "--db", str(path), cwd=path.parent)
    assert_one_line_error(done, "--out /nonexistent/x.jsonl", "/nonexistent does not exist")
    done = run_cli("export", run_id, "--env", "dbx", "--db", str(path), cwd=path.parent)
    assert_one_line_error(done, "--env dbx: expected one of os, db, coding")


def test_runs_shows_whole_ids_on_a_narrow_terminal(store_with_a_run: tuple[Path, str]) -> None:
    path, run_id = store_with_a_run
    done = subprocess.run([*CLI, "runs", "--db", str(path)], cwd=path.parent, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "60"})  # fmt: skip
    assert done.returncode == 0 and run_id in done.stdout, done.stdout


def test_report_and_evolve_resume_take_an_id_prefix(store_with_a_run: tuple[Path, str]) -> None:
    path, run_id = store_with_a_run
    done = run_cli("evolve", "--resume", run_id[:5], "--db", str(path), cwd=path.parent)
    # found by its prefix: refused for its kind, not as a run that is not there
    assert_one_line_error(done, f"run {run_id} is an eval run, not an evolution")
    done = run_cli("report", run_id[:5], "--db", str(path), cwd=path.parent)  # an eval run has a report of its own
    assert done.returncode == 0, done.stderr
    assert f"wrote report-{run_id}/scores.png" in done.stdout


def test_sfts_own_checks_are_user_errors_not_any_value_error(tmp_path: Path) -> None:
    """`cycleqd sft` turned every ValueError into a one-line user error, bugs included; its checks are typed now."""
    from cycleqd.errors import UserError
    from cycleqd.sft.data import load_transcripts

    bad = tmp_path / "gold.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(UserError, match="gold.jsonl:2: not JSON"):
        load_transcripts(bad)
