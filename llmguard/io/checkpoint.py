"""A model checkpoint on disk, addressed tensor by tensor.

Accepts a Hugging Face model directory (``model.safetensors`` or sharded shards with
``model.safetensors.index.json``), or a single ``.safetensors`` file. Pickle checkpoints
(``.bin``/``.pt``) are refused unless ``allow_pickle`` is set, and are then loaded with
``weights_only=True`` (memory-mapped where torch can).

Index entries are confined to the model directory: a ``weight_map`` that points elsewhere is
invalid input, never followed.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.dtypes import TORCH_TO_SAFETENSORS
from llmguard.io.safetensors_file import SafetensorsFile

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "pytorch_model.pt")
PICKLE_INDEX = "pytorch_model.bin.index.json"

#: Files that travel with the weights (config, tokenizer, generation and processor settings).
AUXILIARY_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "spiece.model",
)


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one tensor, and the file it is stored in."""

    name: str
    dtype: str  # safetensors spelling: F32, BF16, ...
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Checkpoint:
    """Tensor-level access to a full model checkpoint."""

    def __init__(self, root: Path, weight_files: dict[str, Path], config: dict[str, Any] | None, *, pickle_state: dict[str, torch.Tensor] | None = None) -> None:
        self.root = root
        self.config = config
        self._files: dict[Path, SafetensorsFile] = {}
        self._pickle_state = pickle_state
        self.meta: dict[str, TensorMeta] = {}
        if pickle_state is not None:
            file = next(iter(set(weight_files.values())), root)
            for name, tensor in pickle_state.items():
                self.meta[name] = TensorMeta(name, TORCH_TO_SAFETENSORS.get(tensor.dtype, "F32"), tuple(tensor.shape), file)
            return
        for name, file in weight_files.items():
            header = self._file(file)
            info = header.tensors.get(name)
            if info is None:
                raise InvalidInputError(f"{file}: missing tensor {name!r} (listed in {INDEX_NAME})")
            self.meta[name] = TensorMeta(name, info.dtype, info.shape, file)

    def _file(self, path: Path) -> SafetensorsFile:
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = SafetensorsFile(path)
        return handle

    # -- queries ----------------------------------------------------------------------------
    @property
    def is_pickle(self) -> bool:
        return self._pickle_state is not None

    def names(self) -> list[str]:
        return list(self.meta)

    def __contains__(self, name: object) -> bool:
        return name in self.meta

    @property
    def weight_files(self) -> list[Path]:
        return sorted({m.file for m in self.meta.values()})

    def safetensors_file(self, path: Path) -> SafetensorsFile:
        return self._file(path)

    @property
    def architecture(self) -> str | None:
        if not self.config:
            return None
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type")

    @property
    def tie_word_embeddings(self) -> bool:
        cfg = self.config or {}
        text_cfg = cfg.get("text_config") or {}
        return bool(cfg.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", False)))

    def auxiliary_files(self) -> list[Path]:
        """Config/tokenizer/generation files to copy next to a derived checkpoint."""
        if not self.root.is_dir():
            return []
        return [self.root / n for n in AUXILIARY_PATTERNS if (self.root / n).is_file()]

    # -- data -------------------------------------------------------------------------------
    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor, on the CPU, in its stored dtype."""
        if name not in self.meta:
            raise InvalidInputError(f"{self.root}: missing tensor {name!r}")
        if self._pickle_state is not None:
            return self._pickle_state[name]
        return self._file(self.meta[name].file).read(name, out=out)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


# -- opening --------------------------------------------------------------------------------
def _confined(root: Path, relative: str, tensor: str) -> Path:
    try:
        candidate = (root / relative).resolve()
    except (ValueError, OSError) as err:  # a NUL byte, a symlink loop: not a usable path
        raise InvalidInputError(f"{root / INDEX_NAME}: weight_map entry for {tensor!r} is not a usable path {relative!r} ({err})") from None
    base = root.resolve()
    if os.path.isabs(relative) or (candidate != base and base not in candidate.parents):
        raise InvalidInputError(
            f"{root / INDEX_NAME}: weight_map entry for {tensor!r} points outside the model directory: {relative!r}"
        )
    if not candidate.is_file():
        raise InvalidInputError(f"{root / INDEX_NAME}: shard {relative!r} (for tensor {tensor!r}) does not exist")
    return candidate


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInputError(f"{path}: invalid JSON ({err})") from None


def _files_from_index(root: Path) -> dict[str, Path]:
    index = _read_json(root / INDEX_NAME)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidInputError(f"{root / INDEX_NAME}: no weight_map")
    return {str(name): _confined(root, str(rel), str(name)) for name, rel in weight_map.items()}


def _files_of_single(path: Path) -> dict[str, Path]:
    return {name: path for name in SafetensorsFile(path).tensors}


def _pickle_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix in (".bin", ".pt", ".pth") else []
    if (root / PICKLE_INDEX).is_file():
        index = _read_json(root / PICKLE_INDEX)
        rels = sorted(set((index.get("weight_map") or {}).values()))
        return [_confined(root, rel, "*") for rel in rels]
    return [root / n for n in PICKLE_NAMES if (root / n).is_file()]


def _load_pickle(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as err:
                    if "mmap" not in str(err):
                        raise
                    loaded = torch.load(file, map_location="cpu", weights_only=True)  # legacy non-zip format
        except Exception as err:  # noqa: BLE001 - any unpickling failure is bad input
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise InvalidInputError(f"{file}: cannot load with weights_only=True ({type(err).__name__}: {first_line})") from None
        if not isinstance(loaded, dict):
            raise InvalidInputError(f"{file}: not a state dict")
        state.update({k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    return state


def open_checkpoint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Checkpoint:
    """Open a model directory or a single weights file for per-tensor reading."""
    root = Path(path)
    if not root.exists():
        raise InvalidInputError(f"{root}: no such file or directory")
    config = None
    if root.is_dir() and (root / "config.json").is_file():
        config = _read_json(root / "config.json")
    if root.is_file() and root.suffix == ".safetensors":
        return Checkpoint(root, _files_of_single(root), None)
    if root.is_dir() and (root / INDEX_NAME).is_file():
        return Checkpoint(root, _files_from_index(root), config)
    if root.is_dir() and (root / SINGLE_NAME).is_file():
        return Checkpoint(root, _files_of_single(root / SINGLE_NAME), config)
    pickles = _pickle_files(root)
    if pickles:
        if not allow_pickle:
            raise InvalidInputError(
                f"{pickles[0]}: pickle checkpoint refused (loading pickles can run code); pass --allow-pickle to load it with weights_only=True"
            )
        return Checkpoint(root, {"": pickles[0]}, config, pickle_state=_load_pickle(pickles))
    if root.is_dir():
        others = sorted(root.glob("*.safetensors"))
        if len(others) == 1 and not (root / "adapter_config.json").exists():
            return Checkpoint(root, _files_of_single(others[0]), config)
    raise InvalidInputError(f"{root}: no model weights found (expected {SINGLE_NAME} or {INDEX_NAME})")


def copy_auxiliary_files(checkpoint: Checkpoint, writer: Any, dtype: torch.dtype | None = None) -> None:
    """Copy config/tokenizer/generation files next to a derived checkpoint.

    With an explicit output dtype, ``config.json`` records it (``dtype`` and the older
    ``torch_dtype``) so ``from_pretrained`` loads the weights in the dtype they were written in.
    """
    for aux in checkpoint.auxiliary_files():
        if aux.name == "config.json" and dtype is not None:
            config = _read_json(aux)
            name = str(dtype).removeprefix("torch.")
            config["dtype"] = name
            if "torch_dtype" in config:
                config["torch_dtype"] = name
            writer.write_json("config.json", config)
        else:
            writer.copy_file(aux)
