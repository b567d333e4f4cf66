"""`cycleqd view RUN`: the run's episodes exported as inspect logs and `inspect view` started on them, in one
command. No server is started here: the viewer's launch is replaced by one that records what it was given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cycleqd.db import EpisodeRecord, open_store
from cycleqd.results import view as view_module
from tests.cli_in_process import Run, one_line_error


def eval_run(db: Path) -> str:
    store = open_store(db)
    run = store.create_run("eval", {"tasks": ["db"]})
    model = store.model_id("sha256:0123456789abcdef", "/models/smol")
    for index, score in enumerate((1.0, 0.0, None)):
        task = store.task_id("db", "builtin", "dev", f"db-{index}", f"hash-{index}")
        transcript = [{"role": "user", "content": f"question {index}"}, {"role": "assistant", "content": "Answer"}]
        store.record_episode(EpisodeRecord(run.id, model, task, 0, "completed" if score is not None else "env_error",
                                           score, transcript=transcript, context_messages=1,
                                           error=None if score is not None else "sandbox gone"))  # fmt: skip
    return run.id


class Viewer:
    """Stands in for `subprocess.run` of the viewer: keeps its argv and what its log folder held at that moment."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.samples: dict[str, list[float | None]] = {}

    def __call__(self, argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        from inspect_ai.log import read_eval_log

        self.argv = argv
        folder = Path(argv[argv.index("--log-dir") + 1])
        for path in sorted(folder.glob("*.eval")):
            log = read_eval_log(str(path))
            self.samples[path.name] = [s.scores["cycleqd"].value if s.scores else None for s in log.samples or []]
        return subprocess.CompletedProcess(argv, 0)


@pytest.fixture
def viewer(monkeypatch: pytest.MonkeyPatch) -> Viewer:
    launched = Viewer()
    monkeypatch.setattr(view_module.subprocess, "run", launched)
    return launched


def test_view_opens_the_run_s_logs_in_inspect_view(tmp_path: Path, run_cli: Run, viewer: Viewer) -> None:
    db = tmp_path / "runs.db"
    run_id = eval_run(db)
    logs = tmp_path / "logs"
    code, _out, err = run_cli("view", run_id[:6], "--db", str(db), "--port", "7600", "--log-dir", str(logs))
    assert code == 0, err
    assert viewer.argv == [sys.executable, "-m", "inspect_ai", "view", "--log-dir", str(logs), "--port", "7600"]
    assert viewer.samples == {f"{run_id}-db-dev-0.eval": [1.0, 0.0, None]}  # every episode, the error unscored
    assert (logs / f"{run_id}-db-dev-0.eval").is_file()  # a folder given is kept
    assert "3 episode(s)" in err and "http://127.0.0.1:7600" in err


def test_without_log_dir_the_logs_go_to_a_temporary_folder_removed_afterwards(
    tmp_path: Path, run_cli: Run, viewer: Viewer
) -> None:
    db = tmp_path / "runs.db"
    run_id = eval_run(db)
    code, _out, err = run_cli("view", run_id, "--db", str(db))
    assert code == 0, err
    folder = Path(viewer.argv[viewer.argv.index("--log-dir") + 1])
    assert folder.name.startswith(f"cycleqd-view-{run_id}-") and viewer.argv[-2:] == ["--port", "7575"]
    assert list(viewer.samples.values()) == [[1.0, 0.0, None]]
    assert not folder.exists()


def test_without_inspect_ai_view_says_how_to_install_it(
    tmp_path: Path, run_cli: Run, viewer: Viewer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runs.db"
    run_id = eval_run(db)
    for name in [m for m in sys.modules if m == "inspect_ai" or m.startswith("inspect_ai.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "inspect_ai", None)  # `import inspect_ai` raises ImportError
    code, _out, err = run_cli("view", run_id, "--db", str(db))
    assert "pip install 'cycleqd[inspect]'" in one_line_error(code, err)
    assert viewer.argv == []
