"""Options of ``eval agree`` (importable without torch: the CLI derives its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from llmguard.options import PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, Options, option


@dataclass(frozen=True, kw_only=True)
class AgreeOptions(Options):
    """Judge results against human labels: the inputs, the breakdown, the bootstrap and the gate."""

    verb: ClassVar[str] = "eval agree"

    pred: Path = option(help="Judge results JSONL (eval hdc / eval ace-m3 output, or any JSONL with id + scores).", panel=PANEL_INPUT)
    human: Path = option(help="Human labels JSONL (id + one field per criterion, or criterion + score).", panel=PANEL_INPUT)
    by: str = option("criterion", help="Break down by: criterion (default), none, or comma list with meta fields (e.g. criterion,scenario).",
                     panel=PANEL_METHOD)
    criteria: str | None = option(None, help="Only these criteria (comma list).", panel=PANEL_METHOD)
    id_field: str = option("id", help="Id field in the predictions.", panel=PANEL_INPUT)
    human_id_field: str | None = option(None, help="Id field in the labels (default: --id-field).", panel=PANEL_INPUT)
    tie_threshold: float = option(0.0, help="Judge score differences up to this count as ties.", panel=PANEL_METHOD, min=0)
    bootstrap: int = option(1000, help="Bootstrap resamples over items for 95% CIs (0: none).", panel=PANEL_METHOD, min=0)
    seed: int = option(0, help="Bootstrap seed.", panel=PANEL_METHOD)
    fail_below: float | None = option(None, help="Exit 10 when a cell's Pearson r is below this (CI gate).", panel=PANEL_OUTPUT)

    @property
    def by_keys(self) -> list[str]:
        return [b.strip() for b in self.by.split(",") if b.strip()] or ["criterion"]
