"""A model as a source of weight tensors: a full checkpoint, or a base checkpoint plus a LoRA adapter.

Verbs that combine models (RESTA, NLSR, SOMF) see every input through :class:`WeightSource`,
so "full fine-tune or adapter" is decided once, here, and not in every method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.checkpoint import Checkpoint, TensorMeta, open_checkpoint
from llmguard.io.lora import LoraAdapter, is_adapter_dir


@dataclass
class WeightSource:
    """θ = base (+ ΔW from ``adapter``). ``base`` is the checkpoint tensors come from."""

    path: Path
    base: Checkpoint
    adapter: LoraAdapter | None = None

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    def names(self) -> list[str]:
        return self.base.names()

    def meta(self, name: str) -> TensorMeta:
        return self.base.meta[name]

    def __contains__(self, name: object) -> bool:
        return name in self.base

    def delta(self, name: str, device: torch.device) -> torch.Tensor | None:
        """ΔW for a tensor (float32 on ``device``), ``None`` where the adapter leaves it as is.

        A ``modules_to_save`` tensor of the adapter replaces the base tensor; its delta is the
        difference, so the arithmetic stays linear.
        """
        if self.adapter is None:
            return None
        delta = self.adapter.tensor_delta(name, device)
        if name in self.adapter.full_tensors:  # replaced (modules_to_save, a saved base_layer), plus any LoRA on top
            full = self.adapter.read_full(name).to(device=device, dtype=torch.float32)
            replaced = full - self.base.read(name).to(device=device, dtype=torch.float32)
            return replaced if delta is None else replaced.add_(delta)
        return delta


def attach_architecture(adapter: LoraAdapter, base_path: Path, what: str) -> None:
    """Give an adapter with LoRA on fused expert parameters its base's architecture (which fused
    parameter each factor pair adapts); every reader of such an adapter needs it first."""
    if not adapter.parameter_modules:
        return
    from llmguard.io.architecture import architecture_of

    if not (Path(base_path) / "config.json").is_file():
        raise InvalidInputError(f"{what}: LoRA on fused expert parameters needs the base model's config.json in {base_path}")
    adapter.use_architecture(architecture_of(base_path))


def open_source(
    path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None, allow_pickle: bool = False, role: str = "model"
) -> WeightSource:
    """Open a checkpoint or an adapter (with its base) as a weight source."""
    root = Path(path)
    if not root.exists():
        raise InvalidInputError(f"{role} {root}: no such file or directory")
    if not is_adapter_dir(root):
        return WeightSource(root, open_checkpoint(root, allow_pickle=allow_pickle))
    adapter = LoraAdapter(root)
    base_path = Path(base) if base is not None else None
    if base_path is None:
        hint = adapter.base_model_name_or_path
        if hint and Path(hint).exists():
            base_path = Path(hint)
        else:
            raise UsageError(
                f"{role} {root} is a LoRA adapter of {hint!r}, which is not a local directory; pass --base PATH"
            )
    checkpoint = open_checkpoint(base_path, allow_pickle=allow_pickle)
    attach_architecture(adapter, base_path, f"{role} {root}")
    adapter.resolve_targets(set(checkpoint.names()))
    adapter.check_shapes({name: meta.shape for name, meta in checkpoint.meta.items()})
    return WeightSource(root, checkpoint, adapter)

