"""Streaming, atomic writer for HF-layout safetensors checkpoints.

Because every output tensor's name, shape and dtype are known before any data is computed
(they follow from the inputs' headers), the writer lays out all shards up front: each shard
file gets its final header immediately and each tensor is ``pwrite``-n at its offset as soon
as it is computed. Nothing is buffered per shard, so memory is one tensor in flight (plus a
bounded write queue), whatever the shard size.

All files go to a hidden temporary sibling of OUT, which is renamed into place only after
every planned tensor was written. Any exception (Ctrl-C included) removes the temporary
directory: an interrupted run never leaves a complete-looking partial output.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from llmguard.errors import UsageError
from llmguard.io.allocator import release_large_buffers_to_os
from llmguard.io.dtypes import ITEMSIZE, TORCH_TO_SAFETENSORS
from llmguard.io.finite import NonFiniteError, count_nonfinite
from llmguard.io.output_safety import OLD_TAG, WRITE_ERRNOS, OutputLock, check_output, disk_error, temp_path

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str | int) -> int:
    """``5GB`` → 5_000_000_000 bytes (decimal units; KiB/MiB/GiB binary)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    unit = (match.group(2) or "").upper() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(f"--max-shard-size {text!r}: expected a size such as 5GB or 500MB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"--max-shard-size {text!r}: must be positive")
    return value


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: name, shape and dtype (safetensors spelling)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


def create_planned_file(path: Path, items: list[TensorPlan], metadata: dict[str, str] | None = None) -> tuple[int, dict[str, int]]:
    """Create a safetensors file with its final header and room for every planned tensor.

    Returns the open file descriptor and each tensor's absolute byte offset, so that tensors can
    be ``pwrite``-n in any order as soon as they exist (nothing is buffered).
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for item in items:
        header[item.name] = {"dtype": item.dtype, "shape": list(item.shape), "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    data_start = 8 + len(raw)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, len(raw).to_bytes(8, "little") + raw, 0)
    os.ftruncate(fd, data_start + offset)
    return fd, {item.name: data_start + header[item.name]["data_offsets"][0] for item in items}


def pwrite_tensor(fd: int, tensor: torch.Tensor, offset: int) -> int:
    """Write a contiguous CPU tensor's bytes at ``offset``; returns the byte count."""
    data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


def check_output_path(out: Path, inputs: Iterable[Path], force: bool) -> None:
    """Refuse to write into (or over) an input model, and refuse an existing OUT without --force
    (the directory-output form of :func:`llmguard.io.output_safety.check_output`)."""
    check_output(Path(out), inputs, force=force, kind="dir", file_inputs_are_models=True)


class StreamingWriter:
    """Write a planned set of tensors as HF-layout shards, atomically.

    Use as a context manager; call :meth:`write` for every planned tensor (any order, any
    device, any float dtype: it is rounded once to the planned dtype), :meth:`copy_file` /
    :meth:`write_text` for side files. Leaving the block normally finalises and renames;
    leaving it with an exception discards everything.

    Every tensor is checked for NaN/Inf after rounding (``check_finite``): one non-finite value
    aborts the whole output with :class:`NonFiniteError` (exit 3), because it means an input
    held NaN/Inf weights or the result overflowed the output dtype.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        plan: list[TensorPlan],
        *,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        force: bool = False,
        inputs: Iterable[Path] = (),
        single_file_name: str | None = None,
        queue_depth: int = 3,
        check_finite: bool = True,
    ) -> None:
        release_large_buffers_to_os()
        self.out = Path(out)
        check_output_path(self.out, list(inputs), force)
        self._lock = OutputLock(self.out)  # taken in __enter__, held until the output is in place or discarded
        self.plan = {p.name: p for p in plan}
        if len(self.plan) != len(plan):
            raise ValueError("duplicate tensor names in the write plan")
        self.single_file_name = single_file_name
        self.max_shard_bytes = max_shard_bytes
        self.tmp = temp_path(self.out)
        self._layout: dict[str, tuple[str, int]] = {}
        self._shards: list[list[TensorPlan]] = []
        self._pending: set[str] = set(self.plan)
        self._fds: dict[str, int] = {}
        self._queue: queue.Queue[tuple[str, torch.Tensor, Callable[[], None] | None] | None] = queue.Queue(maxsize=queue_depth)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.bytes_written = 0
        self.check_finite = check_finite

    # -- layout -----------------------------------------------------------------------------
    def _plan_shards(self) -> list[list[TensorPlan]]:
        shards: list[list[TensorPlan]] = [[]]
        size = 0
        for item in self.plan.values():
            if self.single_file_name is None and shards[-1] and size + item.nbytes > self.max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(item)
            size += item.nbytes
        return shards

    def shard_names(self) -> list[str]:
        if self.single_file_name:
            return [self.single_file_name]
        n = len(self._shards)
        return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    def _create_shards(self) -> None:
        self._shards = self._plan_shards()
        for file_name, items in zip(self.shard_names(), self._shards):
            fd, offsets = create_planned_file(self.tmp / file_name, items)
            self._fds[file_name] = fd
            for item in items:
                self._layout[item.name] = (file_name, offsets[item.name])

    # -- context ----------------------------------------------------------------------------
    def __enter__(self) -> "StreamingWriter":
        # everything up to a running writer thread inside one try: a Ctrl-C landing in
        # Thread.start() (it waits for the thread to come up) must not skip the cleanup, since
        # __exit__ is never called when __enter__ raises
        self._lock.acquire()  # before touching any temporary: another run may be writing OUT
        try:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
            self._create_shards()
            self._thread = threading.Thread(target=self._drain, name="llmguard-writer", daemon=True)
            self._thread.start()
        except OSError as err:
            self._discard()
            raise disk_error(err, self.out) from None
        except BaseException:
            try:
                self._stop_thread()
            except BaseException:
                pass
            self._discard()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            try:
                self._stop_thread()
            except BaseException:
                pass  # the original exception is the one to report
            self._discard()
            return
        try:
            self._stop_thread()
            self._finalize()
        except OSError as err:
            self._discard()
            raise disk_error(err, self.out) from None
        except BaseException:
            self._discard()
            raise
        self._lock.release()

    # -- writing ----------------------------------------------------------------------------
    def write(self, name: str, tensor: torch.Tensor, release: Callable[[torch.Tensor], None] | None = None) -> None:
        """Queue one planned tensor for writing (rounded once to the planned dtype).

        ``release``, if given, is called with ``tensor`` (from the writer thread) once its bytes
        are written, so the caller may reuse its memory; it is not called for a tensor that was
        never written (an earlier error, or an interrupted run).
        """
        if self._error is not None:
            if isinstance(self._error, OSError) and self._error.errno in WRITE_ERRNOS:
                raise disk_error(self._error, self.out)
            raise self._error
        item = self.plan.get(name)
        if item is None:
            raise ValueError(f"tensor {name!r} is not in the write plan")
        if tuple(tensor.shape) != item.shape:
            raise ValueError(f"tensor {name!r}: shape {tuple(tensor.shape)} differs from the plan {item.shape}")
        dtype = {v: k for k, v in TORCH_TO_SAFETENSORS.items()}[item.dtype]
        cpu = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
        self._pending.discard(name)
        self._queue.put((name, cpu, None if release is None else lambda: release(tensor)))

    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is not None:
                continue
            name, tensor, done_callback = job
            try:
                if self.check_finite:
                    bad = count_nonfinite(tensor)
                    if bad:
                        raise NonFiniteError(name, bad, f"in the result ({self.plan[name].dtype}): an input holds NaN/Inf weights "
                                             "or the result overflows the output dtype; nothing was written")
                file_name, offset = self._layout[name]
                self.bytes_written += pwrite_tensor(self._fds[file_name], tensor, offset)
                del tensor
                if done_callback is not None:
                    done_callback()
            except BaseException as err:  # surfaced on the next write() or at exit
                self._error = err

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._error is not None:
            raise self._error

    def write_text(self, relative: str, text: str) -> None:
        try:
            (self.tmp / relative).write_text(text, encoding="utf-8")
        except OSError as err:
            raise disk_error(err, self.out) from None

    def write_json(self, relative: str, payload: Any) -> None:
        self.write_text(relative, json.dumps(payload, indent=2, default=str) + "\n")

    def copy_file(self, source: Path, relative: str | None = None) -> None:
        try:
            shutil.copyfile(source, self.tmp / (relative or source.name))
        except OSError as err:
            if err.errno in WRITE_ERRNOS:
                raise disk_error(err, self.out) from None
            raise

    # -- end --------------------------------------------------------------------------------
    def _finalize(self) -> None:
        if self._pending:
            missing = sorted(self._pending)
            raise RuntimeError(f"{len(missing)} planned tensor(s) were never written, e.g. {missing[0]!r}")
        names = self.shard_names()
        if len(names) > 1:
            index = {
                "metadata": {"total_size": sum(p.nbytes for p in self.plan.values())},
                "weight_map": {name: file for name, (file, _) in sorted(self._layout.items())},
            }
            self.write_json("model.safetensors.index.json", index)
        old = None
        if self.out.exists() or self.out.is_symlink():
            old = temp_path(self.out, OLD_TAG)
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            if old.is_symlink() or not old.is_dir():  # --force over a symlink: drop the link, not its target
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)

    def _discard(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._lock.release()
