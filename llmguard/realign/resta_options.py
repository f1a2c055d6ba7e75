"""Options of ``realign resta`` and ``realign revert`` (importable without torch: the CLI derives
their flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmguard.errors import UsageError
from typing import ClassVar

from llmguard.options import (
    PANEL_INPUT,
    PANEL_METHOD,
    PANEL_OUTPUT,
    Options,
    allow_pickle_option,
    base_option,
    device_option,
    dtype_option,
    force_option,
    max_shard_size_option,
    option,
)


@dataclass(frozen=True, kw_only=True)
class RestaOptions(Options):
    """θ_out = θ_F + γ·(θ_A − θ_U): the inputs, γ, and how the output is written."""

    verb: ClassVar[str] = "realign resta"

    finetuned: Path = option(help="Fine-tuned checkpoint or LoRA adapter.", short="-f", panel=PANEL_INPUT, manifest=False)
    aligned: Path = option(help="Aligned checkpoint or adapter.", short="-a", panel=PANEL_INPUT, manifest=False)
    unaligned: Path = option(help="Unaligned checkpoint or adapter (often the base).", short="-u", panel=PANEL_INPUT, manifest=False)
    output: Path = option(help="Output directory (written atomically).", short="-o", panel=PANEL_OUTPUT, manifest=False)
    gamma: float = option(0.5, help="Weight γ of the safety vector θ_A − θ_U.", short="-g", panel=PANEL_METHOD)
    base: Path | None = base_option()
    as_adapter: bool = option(False, help="Write one exact LoRA adapter instead of a full checkpoint (adapter inputs only).",
                              panel=PANEL_OUTPUT)
    device: str = device_option()
    dtype: str = dtype_option()
    max_shard_size: str | int = max_shard_size_option()
    force: bool = force_option()
    allow_pickle: bool = allow_pickle_option()

    def validate(self) -> None:
        import math

        if not math.isfinite(self.gamma):
            raise UsageError(f"--gamma {self.gamma}: must be a finite number")


@dataclass(frozen=True, kw_only=True)
class RevertOptions(Options):
    """``realign revert``: undo a realign patch exactly."""

    verb: ClassVar[str] = "realign revert"

    patched: Path = option(help="A directory written by llmguard realign (carries realign_patch.json).", positional=True)
    output: Path = option(help="Output directory (written atomically).", short="-o", panel=PANEL_OUTPUT, manifest=False)
    patch: Path | None = option(None, help="Patch file (default: the one inside PATCHED).", panel=PANEL_INPUT)
    force: bool = force_option()
