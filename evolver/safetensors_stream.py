"""Writing a .safetensors file one tensor at a time, in constant memory.

The format is an 8-byte little-endian header length, a JSON header (name → dtype, shape, [begin, end) byte
offsets into the data; optional `__metadata__` of strings), then the data. Every shape is known before any
weight is computed, so the header is written first and each tensor's bytes are appended as they are made.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from types import TracebackType

import torch

from evolver.checkpoint_files import BYTES_PER_ELEMENT

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}  # fmt: skip
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


class StreamWriter:
    """`with StreamWriter(path, [(name, "BF16", shape), …]) as w: w.write(name, tensor)` in the given order.

    The file appears under `path` only when every tensor was written and the writer closed without error."""

    def __init__(
        self, path: Path, specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.specs = specs
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name, dtype, shape in specs:
            size = BYTES_PER_ELEMENT[dtype]
            for dim in shape:
                size *= dim
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self._temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.writing")
        self._file = self._temporary.open("wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.specs):
            raise ValueError(f"{self.path}: {name} is one tensor too many")
        expected, dtype, shape = self.specs[self._next]
        if name != expected:
            raise ValueError(f"{self.path}: expected tensor {expected} next, got {name}")
        if DTYPE_NAMES.get(tensor.dtype) != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{self.path}: {name} should be {dtype} {list(shape)}, got "
                             f"{DTYPE_NAMES.get(tensor.dtype, tensor.dtype)} {list(tensor.shape)}")  # fmt: skip
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        self._file.write(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.specs):
            self._temporary.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: {len(self.specs) - self._next} tensors were never written")
        self._temporary.replace(self.path)

    def abandon(self) -> None:
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
