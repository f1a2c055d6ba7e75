"""Options of the checkpoint tools ``inspect`` and ``diff`` (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from llmguard.options import PANEL_INPUT, Options, allow_pickle_option, device_option, option


@dataclass(frozen=True, kw_only=True)
class InspectOptions(Options):
    """``inspect PATH``: what a checkpoint or adapter holds, optionally with a NaN/Inf scan."""

    verb: ClassVar[str] = "inspect"

    path: Path = option(help="Checkpoint directory, .safetensors file, or PEFT LoRA adapter directory.", positional=True)
    allow_pickle: bool = allow_pickle_option()
    scan: bool = option(False, help="Also read every tensor (one at a time) and count NaN/Inf values; exit 3 if any.")


@dataclass(frozen=True, kw_only=True)
class DiffOptions(Options):
    """``diff A B``: per-module similarity of two checkpoints or adapters."""

    verb: ClassVar[str] = "diff"

    a: Path = option(help="First checkpoint or adapter.", positional=True)
    b: Path = option(help="Second checkpoint or adapter.", positional=True)
    base: Path | None = option(None, help="Compare deltas θ − BASE instead of raw weights (needed for adapter vs checkpoint when the "
                               "adapter's base is not local).", panel=PANEL_INPUT)
    allow_pickle: bool = allow_pickle_option()
    device: str = device_option("cpu")
