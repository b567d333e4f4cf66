"""`cycleqd view RUN`: a run in inspect_ai's log viewer in one command. The run is exported as inspect logs (what
`cycleqd export --format inspect` writes) into a folder, and `inspect view` is started on that folder until it is
stopped (Ctrl-C). A folder we made for it is removed afterwards; one given with `--log-dir` is kept.

inspect_ai is the optional extra `cycleqd[inspect]`; without it the command is one line saying how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from cycleqd.results.export import ExportRequest, run_export
from cycleqd.results.inspect_log import import_inspect
from cycleqd.results.lookup import find_run, open_existing_store

DEFAULT_PORT = 7575  # inspect view's own default


def viewer_argv(log_dir: Path, port: int) -> list[str]:
    """`inspect view` through this interpreter (`python -m inspect_ai`), so the venv need not be on PATH."""
    return [sys.executable, "-m", "inspect_ai", "view", "--log-dir", str(log_dir), "--port", str(port)]


def view_command(run_text: str, db_path: Path, log_dir: Path | None, port: int, err: Console) -> int:
    """Export RUN's inspect logs to `log_dir` (None: a temporary folder) and run the viewer on them; its exit
    status (0 when stopped with Ctrl-C)."""
    import_inspect("cycleqd view")  # before anything is read or written
    store = open_existing_store(db_path)
    run = find_run(store, run_text, db_path)
    folder = log_dir or Path(tempfile.mkdtemp(prefix=f"cycleqd-view-{run.id}-"))
    try:
        total, files = run_export(store, ExportRequest(run.id, "inspect", folder), db_path, err)
        err.print(f"{total} episode(s) of run {run.id} in {len(files)} inspect log(s) in {folder}; inspect view on "
                  f"http://127.0.0.1:{port} (Ctrl-C stops it)", highlight=False, soft_wrap=True)  # fmt: skip
        try:
            return subprocess.run(viewer_argv(folder, port), check=False).returncode
        except KeyboardInterrupt:  # how a viewer is stopped: not an interrupted run
            return 0
    finally:
        if log_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
