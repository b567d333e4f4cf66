"""The command line as a test runs it: a real process of this checkout's `cycleqd`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CYCLEQD = shutil.which("cycleqd", path=str(Path(sys.executable).parent)) or "cycleqd"
# This checkout's CLI, whichever tree the virtual environment's editable install points at (with PYTHONPATH set to
# this checkout, as the tests run).
CYCLEQD_HERE = (sys.executable, "-m", "cycleqd.cli")


def cycleqd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CYCLEQD, *args], capture_output=True, text=True, timeout=timeout)
