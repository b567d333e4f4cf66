"""The identity of a checkpoint: a content hash of what determines its outputs (weights, config, tokenizer,
chat template). Scores are stamped with it, so two runs of the same weights agree on what they measured.

The version of the library that wrote a config (`transformers_version` in config.json and
generation_config.json) is not part of it: the same weights converted under two transformers versions are one model.

Hashing gigabytes is slow, so the result is cached beside the checkpoint, keyed by each file's size and
modification time: a changed file is rehashed, an unchanged checkpoint costs a few stat calls.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CACHE_NAME = ".cycleqd-identity.json"
CONTENT_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt")
IGNORED = {CACHE_NAME}
# Files whose JSON names the library version that wrote them; hashed without that key, in a canonical form.
VERSION_STAMPED = {"config.json", "generation_config.json"}
WRITER_KEYS = ("transformers_version",)
SCHEME = 2  # bumped when what a digest covers changes, so that cached digests of the old scheme are not reused


def content_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name not in IGNORED and p.name.endswith(CONTENT_SUFFIXES)
    )


def _file_digest(path: Path) -> str:
    if path.name in VERSION_STAMPED:
        return _config_digest(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _config_digest(path: Path) -> str:
    """A config's content without the writer's version; its raw bytes when it is not a JSON object."""
    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        return hashlib.sha256(raw).hexdigest()
    for key in WRITER_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checkpoint_identity(folder: Path) -> str:
    """sha256 over the (name, content hash) of every content file, as 'sha256:…'."""
    return _identify(Path(folder))[0]


def weights_identity(folder: Path) -> str:
    """sha256 over the weight files alone: two checkpoints with the same weights and another config or tokenizer
    file share it (an "expert" that is its base re-saved, or one expert given twice)."""
    digests = _identify(Path(folder))[1]
    weights = sorted((name, d) for name, d in digests.items() if name.endswith(".safetensors"))
    return "sha256:" + hashlib.sha256(json.dumps(weights).encode()).hexdigest()


def _identify(folder: Path) -> tuple[str, dict[str, str]]:
    """The identity and each content file's digest, from the cache when no file changed."""
    cache_path = folder / CACHE_NAME
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    files = content_files(folder)
    stamps = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    if cache.get("scheme") != SCHEME:
        cache = {}
    if cache.get("stamps") == stamps and cache.get("identity") and isinstance(cache.get("files"), dict):
        return str(cache["identity"]), dict(cache["files"])
    known = cache.get("files", {}) if isinstance(cache.get("files"), dict) else {}
    old_stamps = cache.get("stamps", {}) if isinstance(cache.get("stamps"), dict) else {}
    digests = {
        p.name: known[p.name] if old_stamps.get(p.name) == stamps[p.name] and p.name in known else _file_digest(p)
        for p in files
    }
    overall = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()
    identity = f"sha256:{overall}"
    try:
        cache_path.write_text(json.dumps({"scheme": SCHEME, "identity": identity, "stamps": stamps, "files": digests}))
    except OSError:
        pass  # a read-only checkpoint is hashed again next time; that is all
    return identity, digests
