"""A checkpoint folder's weight layout, read from the safetensors headers alone (no tensor is loaded), and the
check that experts were fine-tuned from the base: same tensor names, shapes and dtypes."""

from __future__ import annotations

import json
import math
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

INDEX = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
BYTES_PER_ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip
# The reference reader refuses bigger headers; one this large means a corrupt or foreign file.
MAX_HEADER_BYTES = 100 << 20


class CheckpointError(ValueError):
    """A checkpoint folder is missing something or cannot be read; the message names the file."""


class ExpertMismatchError(CheckpointError):
    """An expert's tensors do not line up with the base's."""


@dataclass(frozen=True)
class TensorSpec:
    shard: str
    dtype: str  # as the safetensors header spells it: BF16, F32, …
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * BYTES_PER_ELEMENT[self.dtype]


def read_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (8-byte little-endian length, then the JSON), entries checked."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: header of {length} bytes; not a safetensors file, or a corrupt one")
            header = json.loads(f.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in BYTES_PER_ELEMENT or "shape" not in entry:
            raise CheckpointError(
                f"{path}: header entry of tensor {name} is malformed or has an unknown dtype: {entry}"
            )
    return header


@dataclass(frozen=True)
class CheckpointLayout:
    """Where every weight of a checkpoint lives: shard files in order, and name → (shard, dtype, shape) in the
    order the shards store them. `shard_metadata` keeps each shard's `__metadata__` so that a materialised copy
    carries the same (transformers reads its `format` entry)."""

    folder: Path
    shards: tuple[str, ...]
    tensors: dict[str, TensorSpec]
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)

    @classmethod
    def read(cls, folder: Path) -> CheckpointLayout:
        """The layout of a Hugging Face checkpoint folder: `model.safetensors`, or the shards its index names."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (expected a Hugging Face checkpoint folder)")
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face checkpoint folder)")
        index: dict[str, str] | None = None
        if (folder / INDEX).is_file():
            try:
                index = json.loads((folder / INDEX).read_text())["weight_map"]
                assert isinstance(index, dict)
                shards = tuple(sorted(set(index.values())))
            except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
                raise CheckpointError(
                    f"{folder / INDEX}: not a readable shard index with a weight_map ({exc})"
                ) from None
        elif (folder / SINGLE_FILE).is_file():
            shards = (SINGLE_FILE,)
        else:
            shards = tuple(sorted(p.name for p in folder.glob("*.safetensors")))
        if not shards:
            raise CheckpointError(f"{folder}: no *.safetensors weights (only safetensors checkpoints can be merged)")
        tensors: dict[str, TensorSpec] = {}
        metadata: dict[str, dict[str, str]] = {}
        for shard in shards:
            path = folder / shard
            if not path.is_file():
                raise CheckpointError(f"{folder / INDEX}: names shard {shard}, which is missing")
            header = read_header(path)
            metadata[shard] = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
            # Data-offset order is the order the bytes lie on disk: reading in it streams the file front to back.
            entries = sorted(header.items(), key=lambda item: item[1].get("data_offsets", [0])[0])
            for name, entry in entries:
                if name in tensors:
                    raise CheckpointError(f"{folder}: tensor {name} is in both {tensors[name].shard} and {shard}")
                tensors[name] = TensorSpec(shard, entry["dtype"], tuple(int(d) for d in entry["shape"]))
        if index is not None:
            misplaced = [
                name for name, shard in index.items() if tensors.get(name, TensorSpec("", "", ())).shard != shard
            ]
            if misplaced:
                raise CheckpointError(f"{folder / INDEX}: says tensor {misplaced[0]} is in {index[misplaced[0]]}, "
                                      "but that shard does not hold it")  # fmt: skip
        return cls(folder, shards, tensors, metadata)

    @property
    def weight_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.tensors.values())

    def names_in(self, shard: str) -> list[str]:
        """The tensors of one shard, in the order its bytes lie on disk."""
        return [name for name, spec in self.tensors.items() if spec.shard == shard]

    def copy_non_weight_files(self, out: Path) -> None:
        """Config, tokenizer, chat template, generation config and the shard index: everything but weights.

        Dotfiles are cycleqd's own markers (identity cache, conversion or genome markers), which describe this
        folder and would be wrong in the copy; subfolders are skipped (some repositories keep other weight
        formats there)."""
        out.mkdir(parents=True, exist_ok=True)
        for item in self.folder.iterdir():
            if item.is_file() and item.suffix != ".safetensors" and not item.name.startswith("."):
                shutil.copy(item, out / item.name)


def verify_experts(base: Path, experts: list[Path]) -> CheckpointLayout:
    """The base's layout, once every expert is shown to have exactly its tensor names, shapes and dtypes."""
    if not experts:
        raise ExpertMismatchError("no experts: CycleQD needs at least one expert fine-tuned from the base")
    layout = CheckpointLayout.read(base)
    for expert in experts:
        theirs = CheckpointLayout.read(expert).tensors
        missing = sorted(set(layout.tensors) - set(theirs))
        extra = sorted(set(theirs) - set(layout.tensors))
        if missing:
            raise ExpertMismatchError(f"expert {expert}: tensor {missing[0]} of the base {base} is missing"
                                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                      + (f"; the expert has {extra[0]} instead, which the base lacks" if extra else "")
                                      + "; was this expert fine-tuned from this base?")  # fmt: skip
        if extra:
            raise ExpertMismatchError(f"expert {expert}: tensor {extra[0]} is not in the base {base}"
                                      + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                                      + "; was this expert fine-tuned from this base?")  # fmt: skip
        for name, spec in layout.tensors.items():
            other = theirs[name]
            if other.shape != spec.shape:
                raise ExpertMismatchError(f"expert {expert}: tensor {name} has shape {list(other.shape)}, "
                                          f"the base's is {list(spec.shape)}")  # fmt: skip
            if other.dtype != spec.dtype:
                raise ExpertMismatchError(f"expert {expert}: tensor {name} has dtype {other.dtype}, "
                                          f"the base's is {spec.dtype} (save experts in the base's dtype)")  # fmt: skip
    return layout
