"""Every parameter of ``realign somf``: inputs, preference data, mask, DPO, fusion, output.

Importable without torch (the CLI derives its flags from this class at import time). Validated
once at construction: a bad value is one usage-error line (exit 2) before any input is opened.
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

PANEL_PREF = "Preference data"
PANEL_FUSION = "Fusion"
PANEL_TASK = "Task retention"

GRANULARITIES = ("element", "row")
SPACES = ("auto", "factor", "weight")
MASK_MODES = ("top", "sigmoid", "official")
#: --task-scales (llmguard/realign/somf/scales.py)
TASK_SCALES = ("auto", "tensor", "none")
MERGE_NAMES = ("ta", "ties", "dare", "avg")
#: --lambda is 1 by default. The paper's fusion values (ta 0.3, ties 0.4, dare 0.3, avg 1) erase both
#: fused tasks on the testbed (docs/realign.md); pass them with --lambda to reproduce the paper.
#: --keep-ratio by number of fine-tunes: fusing keeps more, since two task vectors share one mask
KEEP_RATIO = {"single": 0.8, "fusion": 0.9}
#: --steps by number of fine-tunes: a shared mask and its merge scales over two task vectors need
#: longer (DEV, seeds 1 and 4: 300 steps lifted every merge's DEV sst2 or arith, none fell; docs/realign.md)
STEPS = {"single": 150, "fusion": 300}
#: --scale-steps: calibration of the learned merge scales on the written model (DEV, seeds 0-4, every
#: merge: the DEV arith answer NLL fell in 15 of 15 cases; docs/realign.md)
SCALE_STEPS = 50
#: --density by merge: TIES keeps half of each vector (the paper's code: 0.2), DARE keeps 0.8
DENSITY = {"ties": 0.5, "dare": 0.8}


@dataclass(frozen=True, kw_only=True)
class SomfOptions(Options):
    """θ = A + Merge({τ_i ⊙ m / mean(m)}), τ_i = F_i − A, m a Concrete mask trained with DPO."""

    verb: ClassVar[str] = "realign somf"

    aligned: Path = option(help="Initially aligned checkpoint or LoRA adapter (the safe model A).", short="-a", panel=PANEL_INPUT)
    finetuned: tuple[Path, ...] = option(help="Fine-tuned checkpoint or LoRA adapter F_i; repeat it to fuse several with one shared mask.",
                                         short="-f", panel=PANEL_INPUT)
    preference: Path | None = option(None, help="Safety preference pairs (JSONL/JSON/CSV with prompt, chosen, rejected).", short="-p",
                                     panel=PANEL_INPUT)
    output: Path | None = option(None, help="Output directory (written atomically; LoRA in, LoRA out).", short="-o", panel=PANEL_OUTPUT)
    base: Path | None = base_option()
    prompt_field: str = option("prompt", help="Prompt field of the preference data.", panel=PANEL_PREF)
    chosen_field: str = option("chosen", help="Preferred (safe) response field.", panel=PANEL_PREF)
    rejected_field: str = option("rejected", help="Dispreferred (harmful) response field.", panel=PANEL_PREF)
    template: str = option("auto", help="Prompt template: auto, chat, plain, none or a string with {prompt}.", panel=PANEL_PREF)
    max_length: int = option(256, help="Longest tokenised prompt + response (longer responses are cut).", panel=PANEL_PREF, min=2)
    task_data: tuple[Path, ...] = option((), metavar="FILE", panel=PANEL_TASK,
                                         help="(prompt, response) pairs of a fine-tune's own task (its training data, never DEV or "
                                              "TEST); repeat it, one file per fine-tune, when fusing. The mask is also trained to "
                                              "keep these responses likely: loss + --task-weight × their mean per-token NLL.")
    task_prompt_field: str = option("prompt", help="Prompt field of --task-data.", panel=PANEL_TASK)
    task_response_field: str = option("response", help="Response field of --task-data (e.g. answer).", panel=PANEL_TASK)
    task_samples: int = option(512, help="Use at most this many pairs of each --task-data file (seeded sample).", panel=PANEL_TASK,
                               min=1)
    task_weight: float = option(1.0, help="--task-data: weight of the task term against the DPO loss.", panel=PANEL_TASK, min=0,
                                min_exclusive=True)
    space: str = option("auto", help="Task vectors: auto (LoRA factors when one fine-tune continues the aligned adapter, else "
                        "weights: always weights when fusing), factor, or weight (W(F_i) − W(A); checkpoint output).",
                        panel=PANEL_METHOD, choices=SPACES)
    granularity: str = option("element", help="Mask unit: element (one logit per task-vector entry, the paper) or row (one per "
                              "output row: far fewer logits).", panel=PANEL_METHOD, choices=GRANULARITIES)
    temperature: float = option(0.5, help="Concrete (relaxed Bernoulli) temperature.", panel=PANEL_METHOD, min=0, min_exclusive=True)
    init_logit: float = option(0.0, help="Initial mask logit (0: keep probability 0.5).", panel=PANEL_METHOD)
    beta: float = option(0.1, help="DPO β (sigmoid loss).", panel=PANEL_METHOD, min=0, min_exclusive=True)
    steps: int | None = option(None, help="Mask training steps (default: 150 for one fine-tune, 300 when fusing).",
                               panel=PANEL_METHOD, min=1)
    lr: float = option(1e-2, help="Adam learning rate of the mask logits (the paper's code: 1e-3 for one fine-tune over ~500 "
                       "larger steps, 1e-2 for fusion).", panel=PANEL_METHOD, min=0, min_exclusive=True)
    batch_size: int = option(16, help="Preference pairs per step.", panel=PANEL_METHOD, min=1)
    seed: int = option(0, help="Seed of the mask samples, the batches, DARE drops and --mask-mode official.", panel=PANEL_METHOD)
    mask_mode: str = option("top", help="Final binary mask: top (the --keep-ratio largest logits of each tensor), sigmoid "
                            "(σ(ℓ) > 0.5) or official (one seeded relaxed-Bernoulli sample > 0.5, as the paper's code).",
                            panel=PANEL_METHOD, choices=MASK_MODES)
    keep_ratio: float | None = option(None, help="--mask-mode top: fraction of units kept per tensor (default 0.8 for one "
                                      "fine-tune, 0.9 when fusing).", panel=PANEL_METHOD, min=0, min_exclusive=True, max=1)
    task_scales: str = option("auto", help="Fusion: also learn one merge coefficient per tensor and fine-tune, beside the shared "
                              "mask (AdaMerging-style; an extension beyond the paper): auto (tensor when fusing with "
                              "--task-data, else none), tensor or none (the paper's fusion).", panel=PANEL_FUSION,
                              choices=TASK_SCALES)
    scale_steps: int | None = option(None, help="Fusion with learned merge scales: after the mask is made binary, train the scales "
                                     "alone for this many steps on the model as written (binary mask, the merge as written; "
                                     "default 50); 0: no such phase.", panel=PANEL_FUSION, min=0)
    no_rescale: bool = option(False, help="Keep the masked task vector as is instead of rescaling it by 1/mean(mask) (the paper's "
                              "rule).", panel=PANEL_METHOD)
    mask_file: Path | None = option(None, help="Reuse a trained mask (somf_mask.safetensors of an earlier run) instead of training.",
                                    panel=PANEL_METHOD)
    merge: str = option("ta", help="Fusion of the masked task vectors: ta, ties, dare or avg (with one fine-tune ta and avg are "
                        "the identity at λ 1; ties trims and dare drops the one vector).", panel=PANEL_FUSION, choices=MERGE_NAMES)
    lam: float | None = option(None, flag="--lambda", help="Fusion weight λ (default 1; the paper's: ta 0.3, ties 0.4, dare 0.3, "
                               "avg 1).", panel=PANEL_FUSION, min=0, min_exclusive=True)
    density: float | None = option(None, help="ties: fraction of entries kept per vector (default 0.5; the paper's 0.2); dare: "
                                   "fraction kept, 1 − p (default 0.8).", panel=PANEL_FUSION, min=0, min_exclusive=True, max=1)
    device: str = device_option()
    train_dtype: str = option("auto", help="Dtype of the frozen model during mask training: auto (bfloat16 on CUDA, float32 on "
                              "CPU), float32 or bfloat16. Task vectors and logits stay float32.", panel=PANEL_PERF,
                              choices=("auto", "float32", "bfloat16"))
    gradient_checkpointing: bool = option(False, help="Recompute activations in the backward pass (less memory, ~30% more time).",
                                          panel=PANEL_PERF)
    dtype: str = dtype_option()
    max_shard_size: str | int = max_shard_size_option()
    dry_run: bool = option(False, help="Train the mask and report; write nothing.", panel=PANEL_OUTPUT)
    force: bool = force_option()
    allow_pickle: bool = allow_pickle_option()

    def validate(self) -> None:
        if not self.finetuned:
            raise UsageError("pass at least one --finetuned model")
        if self.preference is None and self.mask_file is None:
            raise UsageError("--preference is required (or reuse a trained mask with --mask-file)")
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required (or pass --dry-run)")
        if self.task_data and self.mask_file is not None:
            raise UsageError("--task-data trains the mask; it has no effect with --mask-file")
        if self.task_scales == "tensor" and not self.fusion:
            raise UsageError("--task-scales tensor weighs fine-tunes against each other: pass two or more --finetuned")
        if self.task_scales == "tensor" and not self.task_data and self.mask_file is None:
            raise UsageError("--task-scales tensor needs --task-data (the DPO loss alone shrinks every scale towards the "
                             "aligned model)")
        if self.scale_steps and self.effective_task_scales != "tensor":
            raise UsageError("--scale-steps calibrates learned merge scales: it needs two or more --finetuned with --task-data "
                             "(and no --mask-file or --task-scales none)")
        if self.density is not None and self.merge in ("ta", "avg"):
            raise UsageError(f"--density applies to --merge ties or dare, not {self.merge}")

    @property
    def fusion(self) -> bool:
        return len(self.finetuned) > 1

    @property
    def effective_lambda(self) -> float:
        return self.lam if self.lam is not None else 1.0

    @property
    def effective_density(self) -> float:
        return self.density if self.density is not None else DENSITY.get(self.merge, 0.8)

    @property
    def effective_task_scales(self) -> str:
        """tensor or none; mask-file with --mask-file, whose header holds the scales it was trained
        with (or none), whatever --task-scales says."""
        if self.mask_file is not None:
            return "mask-file"
        if self.task_scales != "auto":
            return self.task_scales
        return "tensor" if self.fusion and self.task_data else "none"

    @property
    def effective_scale_steps(self) -> int:
        """Steps of the scale calibration on the binary mask (0 without learned scales)."""
        if self.effective_task_scales != "tensor":
            return 0
        return self.scale_steps if self.scale_steps is not None else SCALE_STEPS

    @property
    def effective_steps(self) -> int:
        return self.steps if self.steps is not None else STEPS["fusion" if self.fusion else "single"]

    @property
    def effective_keep_ratio(self) -> float:
        return self.keep_ratio if self.keep_ratio is not None else KEEP_RATIO["fusion" if self.fusion else "single"]

    def parameters(self) -> dict[str, Any]:
        """The manifest's parameters: every option plus the effective λ, density and keep ratio."""
        return {**self.to_manifest(), "effective_lambda": self.effective_lambda,
                "effective_density": self.effective_density if self.merge in ("ties", "dare") else None,
                "effective_keep_ratio": self.effective_keep_ratio, "effective_task_scales": self.effective_task_scales,
                "effective_steps": self.effective_steps, "effective_scale_steps": self.effective_scale_steps}
