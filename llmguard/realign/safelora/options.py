"""Options of ``realign safelora`` (importable without torch: the CLI derives its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from llmguard.errors import UsageError
from llmguard.options import (
    PANEL_INPUT,
    PANEL_METHOD,
    PANEL_OUTPUT,
    Options,
    allow_pickle_option,
    device_option,
    dtype_option,
    force_option,
    option,
)


@dataclass(frozen=True, kw_only=True)
class SafeLoraOptions(Options):
    """Safe LoRA: B ← C·B with C = V Vᵀ / ‖V‖_F, V = W_aligned − W_base, for the least aligned modules."""

    verb: ClassVar[str] = "realign safelora"

    aligned: Path = option(help="Aligned checkpoint (or a LoRA adapter on a local base): W_aligned.", short="-a", panel=PANEL_INPUT)
    base: Path = option(help="Unaligned base checkpoint: W_base (V = W_aligned − W_base).", panel=PANEL_INPUT)
    finetuned: Path = option(help="Fine-tuned LoRA adapter to project.", short="-f", panel=PANEL_INPUT)
    output: Path | None = option(None, help="Output directory: the projected LoRA adapter (written atomically).", short="-o",
                                 panel=PANEL_OUTPUT)
    threshold: float = option(0.5, help="Project every module whose cosine between C·ΔW and ΔW is at most this (the paper's "
                              "threshold rule).", panel=PANEL_METHOD, min=-1, max=1)
    top_k: int | None = option(None, help="Project the K modules with the lowest cosine instead (the official code's default "
                               "rule, K = 10).", panel=PANEL_METHOD, min=1)
    device: str = device_option()
    dtype: str = dtype_option()
    dry_run: bool = option(False, help="Compute the cosines and report; write nothing.", panel=PANEL_OUTPUT)
    force: bool = force_option()
    allow_pickle: bool = allow_pickle_option()

    def validate(self) -> None:
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required (or pass --dry-run)")
