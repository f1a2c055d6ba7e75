"""Options of ``realign nlsr``, its calibration data and its DEV ``--search``.

Importable without torch (the CLI derives its flags from this class at import time). Strategy
names (``--scorer``, ``--unit``) are checked against their registries only when a value is
validated, so declaring the options imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llmguard.errors import UsageError
from llmguard.options import (
    PANEL_INPUT,
    PANEL_METHOD,
    PANEL_OUTPUT,
    PANEL_PERF,
    Options,
    allow_pickle_option,
    base_option,
    device_option,
    dtype_option,
    force_option,
    max_shard_size_option,
    option,
)

PANEL_CALIB = "Calibration data"
PANEL_SELECT = "Module selection"
PANEL_SEARCH = "Dev-split search"
PANEL_TASK = "Task guard"

#: fields a ``--search`` grid may vary (spelled on the command line like their flags, without ``--``)
SEARCHABLE = ("alpha", "budget", "threshold", "mask_ratio", "scorer", "unit", "actsvd_keep", "amplify_mode", "task_tolerance")
#: fields whose change leaves the per-module analysis (calibration statistics, scores, masks,
#: similarities) as it is: a grid over only these re-selects and re-writes, nothing else
SELECTION_ONLY = ("budget", "threshold", "select_mode", "prune_rate", "epsilon", "task_data", "task_prompt_field",
                  "task_response_field", "task_samples", "task_tolerance", "task_guard_mode")


def _scorer_names() -> tuple[str, ...]:
    from llmguard.realign.nlsr.scoring import SCORERS

    return tuple(SCORERS)


def _unit_names() -> tuple[str, ...]:
    from llmguard.realign.nlsr.units import UNIT_CHOICES

    return UNIT_CHOICES


@dataclass(frozen=True, kw_only=True)
class NlsrOptions(Options):
    """Every parameter of ``realign nlsr``: inputs, calibration data, method, selection, output, search."""

    verb: ClassVar[str] = "realign nlsr"

    finetuned: Path = option(help="Fine-tuned checkpoint or LoRA adapter to realign.", short="-f", panel=PANEL_INPUT, manifest=False)
    aligned: Path | None = option(None, help="Initially aligned checkpoint or LoRA adapter.", short="-a", panel=PANEL_INPUT)
    output: Path | None = option(None, help="Output directory (written atomically; adapter in, adapter out).", short="-o",
                                 panel=PANEL_OUTPUT, manifest=False)
    base: Path | None = base_option()
    reference: Path | None = option(None, help="A prepared safety reference (checkpoint or adapter) instead of amplifying --aligned.",
                                    panel=PANEL_INPUT)
    calibration: Path | None = option(None, help="Safe (prompt, response) pairs: JSONL/JSON/CSV/Parquet.", short="-c", panel=PANEL_CALIB)
    calibration_from_reference: int | None = option(
        None, metavar="N", panel=PANEL_CALIB, manifest=False, min=1,
        help="Generate N safe responses with the reference model to --harmful-prompts, keep those the safety judge passes.")
    harmful_prompts: Path | None = option(None, help="Harmful prompts (JSONL with a prompt field) for --calibration-from-reference.",
                                          panel=PANEL_CALIB, manifest=False)
    calibration_pairs: tuple[tuple[str, str], ...] | None = option(
        None, help="In-memory (prompt, response) pairs instead of --calibration (library use).", cli=False, manifest=False)
    prompt_field: str = option("prompt", help="Prompt field of the calibration data.", panel=PANEL_CALIB)
    response_field: str = option("response", help="Response field of the calibration data.", panel=PANEL_CALIB)
    template: str = option("auto", help="Prompt template: auto, chat, plain, none or a string with {prompt}.", panel=PANEL_CALIB)
    calibration_samples: int | None = option(512, help="Use at most this many pairs (seeded sample).", panel=PANEL_CALIB, min=1)
    max_response_tokens: int = option(256, help="Response tokens per pair that contribute.", panel=PANEL_CALIB)
    max_length: int = option(512, help="Longest tokenised pair.", panel=PANEL_CALIB)
    skip_bad: bool = option(False, help="Skip malformed data lines instead of failing.", panel=PANEL_CALIB, manifest=False)
    alpha: float = option(0.9, help="ExPO amplification: ΔW_ref = (1+α)·ΔW_aligned.", panel=PANEL_METHOD, min=0)
    amplify_mode: str = option("expo", help="expo (B × (1+α)) or official (both LoRA factors × 2α, as the NLSR code).",
                               panel=PANEL_METHOD, choices=("expo", "official"))
    scorer: str = option("actsvd", help="Safety-critical units: actsvd, wanda or magnitude (no data).", panel=PANEL_METHOD,
                         choices=_scorer_names)
    mask_ratio: float | None = option(None, help="Fraction of units kept per tensor, in (0, 1) (default: weight units 0.15 of a LoRA "
                                      "fine-tune, 0.4 of a full one; rows and elements 0.2).", panel=PANEL_METHOD,
                               min=0, max=1, min_exclusive=True, max_exclusive=True)
    actsvd_keep: float = option(0.8, help="ActSVD: fraction of output directions kept (official 0.8).", panel=PANEL_METHOD,
                                min=0, max=1, min_exclusive=True, max_exclusive=True)
    unit: str = option("auto", panel=PANEL_METHOD, choices=_unit_names,
                       help="auto (weight), element (LoRA elements, the official code's unit; the fine-tune continues the aligned adapter), "
                       "row (ΔW output rows) or weight (single ΔW entries).")
    task_data: Path | None = option(
        None, panel=PANEL_TASK, metavar="FILE",
        help="(prompt, response) pairs of the fine-tune's own task (from its training data, never DEV or TEST): modules whose "
             "transplant costs that task most are left unpatched until its accuracy is within --task-tolerance (ΔW units).")
    task_prompt_field: str = option("prompt", help="Prompt field of --task-data.", panel=PANEL_TASK)
    task_response_field: str = option("response", help="Response field of --task-data (e.g. answer).", panel=PANEL_TASK)
    task_samples: int = option(256, help="Use at most this many --task-data pairs (seeded sample).", panel=PANEL_TASK, min=1)
    task_tolerance: float = option(2.0, help="--task-data: largest loss of task accuracy (points, teacher-forced on FILE) "
                                   "the transplant may cost.", panel=PANEL_TASK, min=0)
    task_guard_mode: str = option(
        "units", panel=PANEL_TASK, choices=("units", "modules"),
        help="--task-data: units reverts single patched weights (rows) a step at a time, ranked by their first-order gain on "
             "task and refusal pairs, then whole modules if needed; modules reverts whole modules only (leave-one-out).")
    select_mode: str = option("least-similar", help="least-similar (deterministic) or official (seeded Bernoulli of the NLSR code).",
                              flag="--select", manifest_key="select", panel=PANEL_SELECT, choices=("least-similar", "official"))
    budget: str | float | int | None = option(
        None, help="Patch the K least similar modules: a count (12) or a fraction (default: 1.0 for weight units, 0.5 for rows "
             "and elements).", panel=PANEL_SELECT, cli_type=str)
    threshold: float | None = option(None, help="Patch every module with similarity below τ (instead of --budget).", panel=PANEL_SELECT)
    prune_rate: float = option(0.5, help="--select official: mean patch probability.", panel=PANEL_SELECT)
    epsilon: float = option(0.2, help="--select official: probability spread ±ε.", panel=PANEL_SELECT)
    seed: int = option(42, help="Seed of --select official and of calibration sampling.", panel=PANEL_SELECT)
    calibration_mode: str = option("auto", help="auto, layerwise (one decoder layer on the device) or whole.", panel=PANEL_PERF)
    batch_tokens: int = option(8192, help="Padded tokens per calibration batch.", panel=PANEL_PERF)
    device: str = device_option()
    dtype: str = dtype_option()
    max_shard_size: str | int = max_shard_size_option()
    dry_run: bool = option(False, help="Show what would be patched; write nothing.", panel=PANEL_OUTPUT)
    search: str | None = option(
        None, metavar="GRID", panel=PANEL_SEARCH, manifest=False,
        help="Try every point of GRID on DEV data and keep the best, e.g. 'alpha=0.5,0.9;budget=0.25,0.5' "
             "(keys: alpha, budget, threshold, mask-ratio, scorer, unit, actsvd-keep, amplify-mode, task-tolerance), or "
             "'auto': the documented grid for a LoRA or a full fine-tune (with --task-data also the guard's tolerance).")
    dev_prompts: Path | None = option(None, help="--search: held-out DEV harmful prompts (JSONL with a prompt field).",
                                      panel=PANEL_SEARCH, manifest=False)
    dev_task: str | None = option(None, help="--search: task name for --dev-task-data (sst2, arith or any label).",
                                  panel=PANEL_SEARCH, manifest=False)
    dev_task_data: Path | None = option(None, help="--search: DEV task items (prompt, answer) whose accuracy must hold.",
                                        panel=PANEL_SEARCH, manifest=False)
    dev_judge: str = option("keyword", help="--search: keyword, or a moderation model (Llama Guard / beaver-dam layout).",
                            panel=PANEL_SEARCH, manifest=False)
    max_task_drop: float = option(5.0, help="--search: largest DEV task-accuracy loss (points) a chosen point may have.",
                                  panel=PANEL_SEARCH, manifest=False, min=0)
    force: bool = force_option()
    allow_pickle: bool = allow_pickle_option()

    def validate(self) -> None:
        if self.calibration is not None and self.calibration_from_reference is not None:
            raise UsageError("give --calibration or --calibration-from-reference, not both")
        if self.task_data is not None and self.unit == "element":
            raise UsageError("--task-data reverts patched ΔW units; it does not apply to --unit element (use weight or row)")
        if self.search is not None:
            self._validate_search()
            return
        if any(v is not None for v in (self.dev_prompts, self.dev_task, self.dev_task_data)):
            raise UsageError("--dev-prompts/--dev-task/--dev-task-data only apply with --search")
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required (or pass --dry-run)")
        if self.needs_calibration and not self.has_calibration:
            raise UsageError(f"--scorer {self.scorer} needs calibration data: pass --calibration FILE (or use --scorer magnitude)")

    def _validate_search(self) -> None:
        grid = self.grid()
        if self.dry_run:
            raise UsageError("--search writes the chosen model; it cannot be combined with --dry-run")
        if self.output is None:
            raise UsageError("--search needs -o/--output")
        if self.dev_prompts is None:
            raise UsageError("--search needs --dev-prompts (held-out harmful prompts; keep the test split for the report)")
        if self.dev_task and self.dev_task_data is None:
            raise UsageError(f"--dev-task {self.dev_task}: give its DEV items with --dev-task-data")
        if self.task_data is None and any("task_tolerance" in params for params in grid):
            raise UsageError("--search: task-tolerance is the task guard's; pass --task-data FILE")
        for params in grid:  # every point is refused now, not after the points before it ran
            self.point(params)

    def grid(self) -> list[dict[str, Any]]:
        """The ``--search`` grid as field dicts (empty without ``--search``)."""
        from llmguard.realign.nlsr.grid import parse_grid, resolve_grid

        if self.search is None:
            return []
        return parse_grid(resolve_grid(self.search, self.finetuned, guarded=self.task_data is not None))

    def point(self, params: dict[str, Any], **changes: Any) -> "NlsrOptions":
        """One search point: these options with ``params`` (and ``changes``) replaced, as a plain run."""
        return self.replace(search=None, dev_prompts=None, dev_task=None, dev_task_data=None, **params, **changes)

    @property
    def needs_calibration(self) -> bool:
        from llmguard.realign.nlsr.scoring import SCORERS

        return SCORERS[self.scorer].needs_calibration

    @property
    def has_calibration(self) -> bool:
        return self.calibration is not None or self.calibration_pairs is not None or self.calibration_from_reference is not None

    def analysis_key(self) -> tuple[Any, ...]:
        """What the per-module analysis depends on: equal keys, equal similarities and masks."""
        return tuple(getattr(self, info.name) for info in self.fields() if info.name not in _NOT_IN_ANALYSIS)


#: fields that never change the per-module analysis (selection, output, presentation and search settings)
_NOT_IN_ANALYSIS = frozenset(SELECTION_ONLY) | {
    "output", "dtype", "max_shard_size", "dry_run", "force", "search", "dev_prompts", "dev_task", "dev_task_data",
    "dev_judge", "max_task_drop",
}
