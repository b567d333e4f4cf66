"""Model references: what a user may pass as `--model`.

- `default`: the embedded SmolLM2-135M-Instruct, converted once into a local checkpoint;
- a folder: a local Hugging Face checkpoint (config.json, *.safetensors, tokenizer);
- `openai/MODEL`: MODEL at the OpenAI-compatible API of `$OPENAI_BASE_URL` (default OpenAI's), key from
  `$OPENAI_API_KEY` (the names inspect_ai and the OpenAI SDK use);
- `URL#NAME`: an external OpenAI-compatible endpoint serving NAME; its API key is read from the environment
  variable named by `key_env` (default OPENAI_API_KEY), never from the command line;
- `hf/ORG/NAME`: a Hugging Face hub model, handed to the model server, which downloads it;
- `vllm/REF`: REF (a folder or `hf/…`) served by vLLM whatever `--server` says (see `server_prefix`);
- a bare `ORG/NAME` is ambiguous (a mistyped folder? `openai/gpt-4o` meant as an API model?), so it is refused
  with a one-line error unless the user allowed a download; cycleqd itself never touches the network to decide.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cycleqd.serving.errors import ModelRefError
from cycleqd.serving.identity import checkpoint_identity

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_BASE_URL = "https://api.openai.com/v1"  # the OpenAI SDK's default when $OPENAI_BASE_URL is unset
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class LocalCheckpoint:
    path: Path

    @property
    def label(self) -> str:
        return str(self.path)

    def identity(self) -> str:
        return checkpoint_identity(self.path)


@dataclass(frozen=True)
class HubModel:
    name: str

    @property
    def label(self) -> str:
        return self.name

    def identity(self) -> str:
        return f"hub:{self.name}"


@dataclass(frozen=True)
class ExternalEndpoint:
    base_url: str
    model: str
    key_env: str = DEFAULT_KEY_ENV

    @property
    def label(self) -> str:
        return f"{self.base_url}#{self.model}"

    def identity(self) -> str:
        return f"endpoint:{self.base_url}#{self.model}"

    def api_key(self) -> str | None:
        return os.environ.get(self.key_env)


ModelRef = LocalCheckpoint | HubModel | ExternalEndpoint


def validate_checkpoint(path: Path) -> LocalCheckpoint:
    """A folder that transformers and vLLM can load; otherwise a ModelRefError naming the missing piece."""
    if not path.is_dir():
        raise ModelRefError(f"{path}: not a folder (expected a Hugging Face checkpoint folder)")
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except OSError as exc:
        raise ModelRefError(f"{config_path}: missing (every checkpoint needs its config.json)") from exc
    except ValueError as exc:
        raise ModelRefError(f"{config_path}: not valid JSON ({exc})") from exc
    if not config.get("architectures"):
        raise ModelRefError(f"{config_path}: field 'architectures' is missing or empty (e.g. ['LlamaForCausalLM'])")
    if not any(path.glob("*.safetensors")):
        raise ModelRefError(f"{path}: no *.safetensors weights (cycleqd loads safetensors only)")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ModelRefError(f"{path}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    return LocalCheckpoint(path.resolve())


def server_prefix(text: str) -> tuple[str | None, str]:
    """`vllm/REF` → ("vllm", REF): the server the user named in the reference; otherwise (None, text)."""
    text = text.strip()
    if text.startswith("vllm/"):
        return "vllm", text.removeprefix("vllm/")
    return None, text


def parse_model_ref(text: str, *, key_env: str = DEFAULT_KEY_ENV, allow_download: bool = False) -> ModelRef:
    """Turn what a user typed into a reference (`default` is resolved by serving.default_model). Reads the
    environment and the file system only: never the network."""
    text = server_prefix(text)[1]
    if not text:
        raise ModelRefError("empty model reference")
    if text.startswith("openai/"):
        return _openai_model(text.removeprefix("openai/"), key_env)
    if text.startswith("hf/"):
        name = text.removeprefix("hf/")
        if not _HUB_NAME.match(name):
            raise ModelRefError(f"{text!r}: expected hf/ORG/NAME (optionally @REVISION), e.g. hf/Qwen/Qwen2.5-7B")
        return HubModel(name)
    if text.startswith(("http://", "https://")):
        url, sep, model = text.partition("#")
        if not sep or not model:
            raise ModelRefError(
                f"{text!r}: an endpoint needs the model name after '#', e.g. http://host:8000/v1#my-model"
            )
        return ExternalEndpoint(url.rstrip("/"), model, key_env)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")):
        return validate_checkpoint(path)
    if _HUB_NAME.match(text):
        if allow_download:
            return HubModel(text)
        raise ModelRefError(
            f"{text!r} is not a checkpoint folder here; to have the model server download it from the Hugging Face "
            f"hub write hf/{text} (or pass --allow-download), for an OpenAI-compatible API write openai/MODEL"
        )
    raise ModelRefError(
        f"{text!r} is neither an existing checkpoint folder, an endpoint (URL#MODEL or openai/MODEL) nor a hub "
        "model (hf/ORG/NAME)"
    )


def _openai_model(model: str, key_env: str) -> ExternalEndpoint:
    if not model:
        raise ModelRefError("'openai/': expected openai/MODEL, e.g. openai/gpt-4o-mini")
    base_url = os.environ.get(BASE_URL_ENV) or OPENAI_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise ModelRefError(f"${BASE_URL_ENV}={base_url!r}: expected an http(s) URL, e.g. http://localhost:8000/v1")
    return ExternalEndpoint(base_url.rstrip("/"), model, key_env)
