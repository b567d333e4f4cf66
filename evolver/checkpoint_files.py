"""A checkpoint folder's weight layout, read from the safetensors headers alone (no tensor is loaded), and the
check that experts were fine-tuned from the base: same tensor names, shapes and dtypes."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

INDEX = "model.safetensors.index.json"
BYTES_PER_ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


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
        count = 1
        for size in self.shape:
            count *= size
        return count * BYTES_PER_ELEMENT[self.dtype]


def read_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (8-byte little-endian length, then the JSON)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


@dataclass(frozen=True)
class CheckpointLayout:
    folder: Path
    shards: tuple[str, ...]
    tensors: dict[str, TensorSpec]

    @classmethod
    def read(cls, folder: Path) -> CheckpointLayout:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face checkpoint folder)")
        if (folder / INDEX).is_file():
            shards = tuple(sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values())))
        else:
            shards = tuple(sorted(p.name for p in folder.glob("*.safetensors")))
        if not shards:
            raise CheckpointError(f"{folder}: no *.safetensors weights")
        tensors: dict[str, TensorSpec] = {}
        for shard in shards:
            path = folder / shard
            if not path.is_file():
                raise CheckpointError(f"{folder / INDEX}: names shard {shard}, which is missing")
            for name, entry in read_header(path).items():
                if name != "__metadata__":
                    tensors[name] = TensorSpec(shard, entry["dtype"], tuple(entry["shape"]))
        return cls(folder, shards, tensors)

    @property
    def weight_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.tensors.values())

    def names_in(self, shard: str) -> list[str]:
        return [name for name, spec in self.tensors.items() if spec.shard == shard]

    def copy_non_weight_files(self, out: Path) -> None:
        """Config, tokenizer, chat template, generation config and the shard index: everything but weights."""
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
                                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))  # fmt: skip
        if extra:
            raise ExpertMismatchError(f"expert {expert}: tensor {extra[0]} is not in the base {base}"
                                      + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))  # fmt: skip
        for name, spec in layout.tensors.items():
            other = theirs[name]
            if other.shape != spec.shape:
                raise ExpertMismatchError(f"expert {expert}: tensor {name} has shape {list(other.shape)}, "
                                          f"the base's is {list(spec.shape)}")  # fmt: skip
            if other.dtype != spec.dtype:
                raise ExpertMismatchError(f"expert {expert}: tensor {name} has dtype {other.dtype}, "
                                          f"the base's is {spec.dtype}")  # fmt: skip
    return layout
