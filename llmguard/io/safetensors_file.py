"""One ``.safetensors`` file, read one tensor at a time with ``pread`` (no mmap, no whole shard).

The header is parsed and validated up front so that a truncated or forged file fails with one
clear message naming the file and the tensor, before any output is written. Tensor bytes are
read straight into the memory of the returned tensor (one copy from the page cache), which is
what keeps peak RSS at about one tensor per input.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.dtypes import ITEMSIZE, SAFETENSORS_TO_TORCH

MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype name (safetensors spelling), shape and byte range."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return SAFETENSORS_TO_TORCH[self.dtype]


class SafetensorsFile:
    """A validated safetensors header plus lazy per-tensor reads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.metadata: dict[str, str] = {}
        self.header_bytes = b""
        self.tensors: dict[str, TensorInfo] = self._parse_header()

    # -- header -----------------------------------------------------------------------------
    def _bad(self, what: str) -> InvalidInputError:
        return InvalidInputError(f"{self.path}: {what}")

    def _parse_header(self) -> dict[str, TensorInfo]:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise self._bad(f"truncated safetensors file ({size} bytes, no header length)")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                    raise self._bad(f"header length {header_len} is beyond the file ({size} bytes)")
                raw = handle.read(header_len)
        except OSError as err:
            raise self._bad(f"cannot read: {err.strerror or err}") from None
        self.header_bytes = raw
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._bad(f"invalid header JSON ({err})") from None
        if not isinstance(header, dict):
            raise self._bad("invalid header JSON (not an object)")
        data_start = 8 + header_len
        data_len = size - data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise self._bad("invalid header JSON (__metadata__ is not an object)")
        self.metadata = {str(k): str(v) for k, v in meta.items()}
        tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            tensors[name] = self._tensor_info(name, entry, data_start, data_len)
        self._refuse_overlaps(tensors)
        return tensors

    def _refuse_overlaps(self, tensors: dict[str, TensorInfo]) -> None:
        """Two tensors sharing bytes: a forged file (the safetensors library refuses it too), and
        a write through one would silently change the other."""
        spans = sorted((info.start, info.start + info.nbytes, name) for name, info in tensors.items() if info.nbytes)
        for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise self._bad(f"tensors {name_a!r} and {name_b!r} overlap (data_offsets share bytes)")

    def _tensor_info(self, name: str, entry: object, data_start: int, data_len: int) -> TensorInfo:
        if not isinstance(entry, dict):
            raise self._bad(f"tensor {name!r}: header entry is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if dtype not in SAFETENSORS_TO_TORCH:
            raise self._bad(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise self._bad(f"tensor {name!r}: invalid shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise self._bad(f"tensor {name!r}: invalid data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != expected:
            raise self._bad(
                f"tensor {name!r}: data_offsets span {end - begin} bytes but shape {shape} of {dtype} needs {expected}"
            )
        if end > data_len:
            raise self._bad(f"truncated: tensor {name!r} ends at byte {data_start + end}, file has {data_start + data_len}")
        return TensorInfo(name, self.path, dtype, tuple(shape), data_start + begin, expected)

    # -- data -------------------------------------------------------------------------------
    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor into a fresh CPU tensor (or into ``out``, a uint8 buffer, e.g. pinned)."""
        info = self.tensors[name]
        buffer = out[: info.nbytes] if out is not None else torch.empty(info.nbytes, dtype=torch.uint8)
        if info.nbytes:
            view = memoryview(buffer.numpy())
            fd = self._descriptor()
            done = 0
            while done < info.nbytes:
                got = os.preadv(fd, [view[done:]], info.start + done)
                if got <= 0:
                    raise self._bad(f"truncated: tensor {name!r} could not be read completely")
                done += got
        return buffer.view(info.torch_dtype).reshape(info.shape)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
