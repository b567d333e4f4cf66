"""Writing a .safetensors file one tensor at a time, in constant memory.

The format is an 8-byte little-endian header length, a JSON header (name → dtype, shape, [begin, end) byte
offsets into the data, which the tensors cover back to back; optional `__metadata__` of strings), then the data,
little-endian, C order. `safetensors.torch.save_file` needs every tensor in memory at once; here every shape is
known before any weight is computed (from the base's layout), so the header is written first and each tensor's
bytes are appended as they are made: materialising an 8B model never holds more than one tensor.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import torch

from cycleqd.evolver.checkpoint_files import BYTES_PER_ELEMENT

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
               torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64"}  # fmt: skip
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
# The data starts 8-byte aligned, so memory-mapped fp32/fp64 views of it are aligned too.
ALIGNMENT = 8

if sys.byteorder != "little":  # tensors' memory is written as is, and the format is little-endian
    raise ImportError("evolver.safetensors_stream writes raw tensor memory and needs a little-endian machine")


class StreamWriteError(ValueError):
    """A tensor that does not match the header announced for it, or a file closed before every tensor came."""


def encode_header(specs: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length and the JSON header for these tensors laid out back to back, in the order given."""
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        if name in header:
            raise StreamWriteError(f"tensor name {name} is given twice, or is the reserved __metadata__")
        if dtype not in BYTES_PER_ELEMENT:
            raise StreamWriteError(
                f"tensor {name}: unknown safetensors dtype {dtype} (known: {', '.join(TORCH_DTYPES)})"
            )
        size = BYTES_PER_ELEMENT[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % ALIGNMENT)  # spaces are JSON whitespace; 8 + length stays aligned
    return struct.pack("<Q", len(encoded)) + encoded


class StreamWriter:
    """`with StreamWriter(path, [(name, "BF16", shape), …]) as w: w.write(name, tensor)` in the given order.

    Each tensor must be the next one announced, with exactly its dtype and shape; anything else raises
    StreamWriteError (a ValueError) and abandons the file. Bytes go to a temporary name beside `path`; the file
    appears under `path` (by rename) only when every tensor was written and the writer closed without error, so
    a reader never sees a partial file. `fsync=True` makes the published file durable, for files that are
    expensive to recompute.
    """

    def __init__(
        self,
        path: Path,
        specs: list[tuple[str, str, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.specs = [(name, dtype, tuple(int(d) for d in shape)) for name, dtype, shape in specs]
        header = encode_header(self.specs, metadata)
        self._fsync = fsync
        self._temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.writing")
        self._file = self._temporary.open("wb")
        self._file.write(header)
        self._next = 0
        self._published = False

    @property
    def pending(self) -> list[str]:
        """The tensors still to write, in the order they must come."""
        return [name for name, _, _ in self.specs[self._next :]]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._file.closed:
            raise StreamWriteError(f"{self.path}: the writer is closed; {name} came too late")
        problem = None
        if self._next >= len(self.specs):
            problem = f"{name} is one tensor too many"
        else:
            expected, dtype, shape = self.specs[self._next]
            if name != expected:
                problem = f"expected tensor {expected} next, got {name}"
            elif DTYPE_NAMES.get(tensor.dtype) != dtype or tuple(tensor.shape) != shape:
                problem = (f"{name} should be {dtype} {list(shape)}, got "
                           f"{DTYPE_NAMES.get(tensor.dtype, tensor.dtype)} {list(tensor.shape)}")  # fmt: skip
        if problem:
            self.abandon()
            raise StreamWriteError(f"{self.path}: {problem}; file abandoned")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            # A byte view of the tensor's own memory: no copy, and no need for numpy to know bfloat16 or float8.
            self._file.write(memoryview(flat.view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        """Publish the file; refuses (and abandons it) if a tensor was never written."""
        if self._published:
            return
        if self._file.closed:
            raise StreamWriteError(f"{self.path}: the writer was abandoned; nothing to publish")
        if self._next != len(self.specs):
            missing = self.pending
            self.abandon()
            raise StreamWriteError(f"{self.path}: {len(missing)} tensors were never written (first: {missing[0]})")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        self._temporary.replace(self.path)
        self._published = True

    def abandon(self) -> None:
        """Close and delete the temporary file; nothing is published."""
        if not self._file.closed:
            self._file.close()
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abandon()
