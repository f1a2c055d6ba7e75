"""The reversible patch: exactly which stored values a realignment changed, before and after.

``realign_patch.safetensors`` holds, per changed tensor ``K`` of the output, ``K::index``
(int64: flat element indices, or row indices; ``"axis": 1`` in the JSON when the rows are columns of
a transposed Conv1D weight), ``K::original`` and ``K::patched`` (the values in
the stored dtype); ``realign_patch.json`` describes it. ``revert`` restores the original values
after checking that the tensor still holds the patched ones, so undoing is bit-exact.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.checkpoint import open_checkpoint
from llmguard.io.dtypes import TORCH_TO_SAFETENSORS
from llmguard.io.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.safetensors_file import SafetensorsFile
from llmguard.io.writer import StreamingWriter, TensorPlan, create_planned_file, pwrite_tensor
from llmguard.progress import NullProgress, Progress

PATCH_WEIGHTS = "realign_patch.safetensors"
PATCH_INDEX = "realign_patch.json"
PATCH_FORMAT = "llmguard-realign-patch/1"
_SKIP_ON_REVERT = {PATCH_WEIGHTS, PATCH_INDEX, MANIFEST_NAME, "README.md", "nlsr_modules.json", "model.safetensors.index.json"}


@dataclass
class PatchRecorder:
    """Writes the patch while the transplant runs, one tensor's entry at a time.

    The patch of a row- or weight-unit run is as large as the values it overwrote (a fifth of the
    patched weights, twice, at the default mask), so it is never held in memory: its layout is
    planned from the masks before the transplant (:func:`entry_plan`) and each entry is written
    to its place in ``realign_patch.safetensors`` as soon as it exists.
    """

    unit: str  # "elements" (flat indices: LoRA elements and weight units) | "rows"
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → count, dtype
    values_overwritten: int = 0
    values_changed: int = 0
    _fd: int | None = None
    _offsets: dict[str, int] = field(default_factory=dict)
    _plan: dict[str, TensorPlan] = field(default_factory=dict)

    @staticmethod
    def entry_plan(key: str, units: int, value_shape: tuple[int, ...], dtype: str) -> list[TensorPlan]:
        """The three tensors of one patched tensor ``key``: ``units`` indices and their values."""
        return [TensorPlan(f"{key}::index", (units,), "I64"), TensorPlan(f"{key}::original", value_shape, dtype),
                TensorPlan(f"{key}::patched", value_shape, dtype)]

    @contextlib.contextmanager
    def writing(self, directory: Path, plan: list[TensorPlan]) -> Iterator["PatchRecorder"]:
        """Open ``directory/realign_patch.safetensors`` laid out for ``plan`` (nothing when empty)."""
        self._plan = {item.name: item for item in plan}
        if plan:
            self._fd, self._offsets = create_planned_file(directory / PATCH_WEIGHTS, plan, {"llmguard": PATCH_FORMAT})
        try:
            yield self
            unwritten = sorted({name.rpartition("::")[0] for name in self._plan} - set(self.tensors))
            if unwritten:
                raise RuntimeError(f"patch entries planned but never written, e.g. {unwritten[0]!r}")
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def record(self, key: str, index: torch.Tensor, original: torch.Tensor, patched: torch.Tensor, columns: bool = False) -> None:
        """One patched tensor; ``columns``: row units index its columns (a transposed Conv1D weight)."""
        if self._fd is None:
            raise RuntimeError("PatchRecorder.record outside PatchRecorder.writing")
        for part, value in (("index", index.to(torch.int64)), ("original", original), ("patched", patched)):
            item = self._plan.get(f"{key}::{part}")
            value = value.detach().cpu().contiguous()
            if item is None or tuple(value.shape) != item.shape or TORCH_TO_SAFETENSORS[value.dtype] != item.dtype:
                raise RuntimeError(f"patch entry {key}::{part}: {tuple(value.shape)} {value.dtype} is not what was planned")
            pwrite_tensor(self._fd, value, self._offsets[item.name])
        self.tensors[key] = {"count": int(index.numel()), "dtype": str(original.dtype).removeprefix("torch.")}
        if columns:
            self.tensors[key]["axis"] = 1
        self.values_overwritten += patched.numel()
        self.values_changed += int((original != patched).sum())

    def save(self, directory: Path, meta: dict[str, Any]) -> None:
        """Write ``realign_patch.json`` (the index of the weights written by :meth:`record`)."""
        payload = {
            "format": PATCH_FORMAT,
            "unit": self.unit,
            "weights_file": PATCH_WEIGHTS if self._plan else None,
            "tensors": self.tensors,
            "values_overwritten": self.values_overwritten,
            "values_changed": self.values_changed,
            **meta,
        }
        (directory / PATCH_INDEX).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _weights_of(directory: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], Callable[[str], torch.Tensor], str | None]:
    """(name → (shape, dtype), reader, single output file name) of a model or adapter directory."""
    if (directory / ADAPTER_CONFIG).is_file():
        file = SafetensorsFile(directory / ADAPTER_WEIGHTS)
        return {k: (tuple(v.shape), v.dtype) for k, v in file.tensors.items()}, file.read, ADAPTER_WEIGHTS
    checkpoint = open_checkpoint(directory)
    return {k: (m.shape, m.dtype) for k, m in checkpoint.meta.items()}, checkpoint.read, None


def read_patch(patched: Path, patch: Path | None = None) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    index_path = patch if patch is not None else patched / PATCH_INDEX
    if index_path.is_dir():
        index_path = index_path / PATCH_INDEX
    if not index_path.is_file():
        raise InvalidInputError(f"{index_path}: no realign patch (expected {PATCH_INDEX} from llmguard realign)")
    try:
        meta = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInputError(f"{index_path}: invalid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != PATCH_FORMAT:
        raise InvalidInputError(f"{index_path}: not a {PATCH_FORMAT} patch")
    entries: dict[str, dict[str, torch.Tensor]] = {}
    if meta.get("weights_file"):
        weights = index_path.parent / str(meta["weights_file"])
        if not weights.is_file() or weights.parent.resolve() != index_path.parent.resolve():
            raise InvalidInputError(f"{index_path}: patch weights {meta['weights_file']!r} missing")
        file = SafetensorsFile(weights)
        for key in file.tensors:
            name, _, part = key.rpartition("::")
            entries.setdefault(name, {})[part] = file.read(key)
    for name, entry in entries.items():
        if set(entry) != {"index", "original", "patched"}:
            raise InvalidInputError(f"{index_path}: patch entry {name!r} is incomplete")
    return meta, entries


@dataclass
class RevertResult:
    output: Path
    tensors_restored: int
    values_restored: int
    manifest: dict


def run_revert(options: Any, progress: Progress | None = None) -> RevertResult:
    """``realign revert`` from its ``RevertOptions``."""
    return revert(options.patched, options.output, patch=options.patch, force=options.force, progress=progress)


def revert(patched: str | os.PathLike[str], output: str | os.PathLike[str], *, patch: str | os.PathLike[str] | None = None, force: bool = False, progress: Progress | None = None) -> RevertResult:
    """Write ``patched`` with every patched value restored to its original (bit-exact)."""
    progress = progress or NullProgress()
    source = Path(patched)
    if not source.is_dir():
        raise InvalidInputError(f"{source}: not a directory written by llmguard realign")
    manifest = Manifest(verb="realign revert", parameters={"patched": str(source), "patch": str(patch) if patch else None})
    with manifest.stage("read patch") as record:
        meta, entries = read_patch(source, Path(patch) if patch else None)
        shapes, read, single = _weights_of(source)
        for key in entries:
            if key not in shapes:
                raise InvalidInputError(f"{source}: tensor {key!r} of the patch is not in this model (wrong patch?)")
        record["tensors"] = len(entries)
        manifest.add_input("patched", source)
    plan = [TensorPlan(name, shape, dtype) for name, (shape, dtype) in shapes.items()]
    inputs = [source] + ([Path(patch)] if patch else [])
    restored = 0
    with StreamingWriter(output, plan, force=force, inputs=inputs, single_file_name=single) as writer:
        with manifest.stage("restore tensors") as record:
            progress.stage("revert patch", len(plan))
            for name in shapes:
                tensor = read(name)
                entry = entries.get(name)
                if entry is not None:
                    tensor = tensor.clone()
                    rows = meta.get("unit") == "rows"
                    columns = rows and (meta.get("tensors") or {}).get(name, {}).get("axis") == 1
                    view = tensor.T if columns else tensor if rows else tensor.view(-1)
                    index = entry["index"]
                    if index.numel() and (int(index.max()) >= view.shape[0] or int(index.min()) < 0):
                        raise InvalidInputError(f"patch entry {name!r}: index out of range for shape {list(tensor.shape)}")
                    current = view[index]
                    if current.shape != entry["patched"].shape or not torch.equal(current, entry["patched"].to(current.dtype)):
                        raise InvalidInputError(f"{source}: tensor {name!r} does not hold the patched values (was it modified after the patch?)")
                    view[index] = entry["original"].to(tensor.dtype)
                    restored += int(entry["original"].numel())
                writer.write(name, tensor)
                progress.advance()
            record["values_restored"] = restored
        for item in sorted(source.iterdir()):
            if item.is_file() and item.name not in _SKIP_ON_REVERT and not item.name.endswith(".safetensors") and not item.name.startswith("."):
                writer.copy_file(item)
        manifest.extra["reverted_from"] = meta.get("verb")
        payload = manifest.to_dict()
        writer.write_json(MANIFEST_NAME, payload)
    progress.close()
    return RevertResult(Path(output), len(entries), restored, payload)


__all__ = ["PATCH_INDEX", "PATCH_WEIGHTS", "PatchRecorder", "RevertResult", "read_patch", "revert"]
