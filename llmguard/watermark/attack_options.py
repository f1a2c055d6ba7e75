"""Options of ``watermark scrub``, ``watermark spoof`` and ``watermark distill`` (no torch import).

Each verb is one flat :class:`llmguard.options.Options` class, so ``llmguard.cli.derive`` makes its
flags and the manifest records every parameter. The fields the verbs share are declared once,
in two groups that the verbs inherit: :class:`TrainFields` (how the fresh student is distilled,
CDG-KD's recipe by default) and :class:`ClosedLoopFields` (the held-out evaluation and the
teacher's watermark scheme).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from llmguard.errors import UsageError
from llmguard.options import PANEL_DANGER, PANEL_INPUT, PANEL_OUTPUT, PANEL_PERF, Options, device_option, force_option, option
from llmguard.watermark.options import SchemeOptions
from llmguard.watermark.rule import MODES, check_rule

PANEL_RULE = "Contrastive rule"
PANEL_TRAIN = "Distillation"
PANEL_LOOP = "Closed loop"
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
TEMPLATES = ("none", "auto", "plain", "chat")


@dataclass(frozen=True, kw_only=True)
class TrainFields(Options):
    """How the fresh student is trained (CDG-KD's LLaMA-Factory recipe by default)."""

    student_init: str | None = option(None, help="Model the new student starts from (HF directory; CDG-KD: the base "
                                      "model; a spoof may fine-tune S itself).", panel=PANEL_INPUT)
    lora: bool = option(False, help="Train a LoRA adapter instead of all weights (writes a PEFT adapter directory).",
                        panel=PANEL_TRAIN)
    lora_r: int = option(16, help="LoRA rank.", min=1, panel=PANEL_TRAIN)
    lora_alpha: int = option(32, help="LoRA alpha.", min=1, panel=PANEL_TRAIN)
    epochs: float = option(1.0, help="Training epochs over the dataset.", min=0, min_exclusive=True, panel=PANEL_TRAIN)
    learning_rate: float = option(1e-5, help="Peak learning rate.", flag="--lr", min=0, min_exclusive=True, panel=PANEL_TRAIN)
    lr_scheduler: str = option("cosine", help="Learning-rate schedule (transformers' names).", choices=SCHEDULERS,
                               panel=PANEL_TRAIN)
    warmup_ratio: float = option(0.1, help="Fraction of the steps spent warming up linearly.", min=0, max=1,
                                 max_exclusive=True, panel=PANEL_TRAIN)
    train_batch_size: int = option(4, help="Sequences per device per step.", min=1, panel=PANEL_TRAIN)
    grad_accum: int = option(1, help="Gradient accumulation steps.", min=1, panel=PANEL_TRAIN)
    max_length: int = option(1024, help="Longest training sequence (prompt + output) in tokens; longer ones are cut.",
                             min=1, panel=PANEL_TRAIN)
    weight_decay: float = option(0.0, help="AdamW weight decay.", min=0, panel=PANEL_TRAIN)
    train_seed: int = option(0, help="Seed of the data order (and of a LoRA adapter's initialisation).", panel=PANEL_TRAIN)

    def validate(self) -> None:
        if not math.isfinite(self.epochs) or not math.isfinite(self.learning_rate):
            raise UsageError("--epochs and --lr must be finite")


@dataclass(frozen=True, kw_only=True)
class ClosedLoopFields(SchemeOptions):
    """Held-out evaluation and the watermark to detect (the teacher's; the scheme flags of ``detect``)."""

    eval_prompts: str | None = option(None, help="Held-out prompts for the closed loop (JSONL/plain lines); without it, no loop.",
                                      panel=PANEL_LOOP)
    eval_text: str | None = option(None, help="Held-out clean text (JSONL 'text' field or plain lines) for perplexity.",
                                   panel=PANEL_LOOP)
    eval_max_new_tokens: int = option(256, help="New tokens per held-out prompt.", min=1, panel=PANEL_LOOP)
    eval_seed: int = option(0, help="Sampling seed of the held-out generations.", panel=PANEL_LOOP)
    z_threshold: float = option(4.0, help="Detection threshold on z (and |z|) for the flagged fractions.", panel=PANEL_LOOP)

    def validate(self) -> None:
        self.check_scheme()
        if self.eval_text is not None and self.eval_prompts is None:
            raise UsageError("--eval-text needs --eval-prompts (the closed loop)")

    def scheme_for(self, tokenizer: object, model_vocab_size: int) -> object:
        """The detector's scheme; ``--vocab-size auto`` follows ``detect`` (model for hf, else tokenizer)."""
        from llmguard.watermark.schemes import build_scheme

        source = self.vocab_source(has_model=True)
        if source == "model":
            size = model_vocab_size
        elif source == "tokenizer":
            size = len(tokenizer)  # type: ignore[arg-type]
        else:
            try:
                size = int(source)
            except ValueError:
                raise UsageError(f"--vocab-size must be auto, tokenizer, model or an integer, got {source!r}") from None
        return build_scheme(self.scheme, self.profile, self.scheme_params(size))


@dataclass(frozen=True, kw_only=True)
class AttackOptions(TrainFields, ClosedLoopFields):
    """``watermark scrub`` / ``watermark spoof``: models, prompts, the contrastive rule, output."""

    mode: ClassVar[str] = ""

    student: str = option(help="Student S: the model with the strong (inherited) watermark.", panel=PANEL_INPUT)
    reference: str = option(help="Reference R: the same tokenizer, a weaker watermark (e.g. distilled on diluted data).",
                            panel=PANEL_INPUT)
    prompts: str = option(help="Prompts to continue (JSONL/JSON with --prompt-field, SFT records, or plain lines).",
                          panel=PANEL_INPUT)
    output: str = option(help="Output directory: data.jsonl, student/, report.json, llmguard.json.", short="-o",
                         panel=PANEL_OUTPUT)
    prompt_field: str = option("prompt", help="JSON field with the prompt.", panel=PANEL_INPUT)
    template: str = option("none", help="Prompt formatting: none (as given), auto (chat template if any), plain, chat.",
                           choices=TEMPLATES, panel=PANEL_INPUT)
    alpha: float = option(0.1, help="Plausibility cutoff: keep tokens with p ≥ α·max p of the mask's model (0 < α < 1).",
                          panel=PANEL_RULE)
    beta: float = option(0.5, help="Contrast strength β > 0: s = ℓ_R − β(ℓ_S − ℓ_R) (scrub) or ℓ_S + β(ℓ_S − ℓ_R) (spoof).",
                         panel=PANEL_RULE)
    sample: bool = option(True, help="Sample from the contrastive scores (default) or take the argmax.",
                          flag="--sample/--greedy", panel=PANEL_RULE)
    temperature: float = option(1.0, help="Sampling temperature on the contrastive scores.", min=0, min_exclusive=True,
                                panel=PANEL_RULE)
    top_p: float = option(1.0, help="Nucleus sampling on the contrastive scores.", min=0, max=1, min_exclusive=True,
                          panel=PANEL_RULE)
    seed: int = option(0, help="Sampling seed (each batch is seeded from it and its index: resumes repeat exactly).",
                       panel=PANEL_RULE)
    max_new_tokens: int = option(256, help="New tokens per prompt.", min=1, panel=PANEL_RULE)
    batch_size: int = option(50, help="Prompts per contrastive batch.", min=1, panel=PANEL_PERF)
    device: str = device_option()
    dtype: str = option("auto", help="auto, float32, bfloat16 or float16 (generation).", panel=PANEL_PERF,
                        choices=("auto", "float32", "bfloat16", "float16"))
    load_in_4bit: bool = option(False, help="Load S and R in 4 bit (bitsandbytes, GPU).", panel=PANEL_PERF)
    load_in_8bit: bool = option(False, help="Load S and R in 8 bit (bitsandbytes, GPU).", panel=PANEL_PERF)
    force_vocab: bool = option(False, help="Accept S and R whose vocab sizes differ although the tokenizer is the same.",
                               panel=PANEL_DANGER)
    fmt: str = option("sft", help="Dataset format: sft (instruction/input/output + provenance).", flag="--format",
                      choices=("sft",), panel=PANEL_OUTPUT)
    data_only: bool = option(False, help="Stop after writing the dataset (no distillation, no closed loop).",
                             panel=PANEL_OUTPUT)
    resume: bool = option(False, help="Continue an interrupted run of the same OUT.", panel=PANEL_OUTPUT, manifest=False)
    force: bool = force_option()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise TypeError("use ScrubOptions or SpoofOptions")
        check_rule(self.mode, self.alpha, self.beta)
        if self.load_in_4bit and self.load_in_8bit:
            raise UsageError("--load-in-4bit and --load-in-8bit are mutually exclusive")
        if self.resume and self.force:
            raise UsageError("--resume and --force contradict each other")
        if self.data_only:
            return
        if self.student_init is None:
            raise UsageError("--student-init is required to distil a new student (or pass --data-only)")
        TrainFields.validate(self)
        ClosedLoopFields.validate(self)

    def generation_key(self) -> dict[str, object]:
        """What must match for ``--resume`` to continue a dataset."""
        keep = ("student", "reference", "prompts", "prompt_field", "template", "alpha", "beta", "sample", "temperature",
                "top_p", "seed", "max_new_tokens", "batch_size", "fmt")
        return {"mode": self.mode, **{k: getattr(self, k) for k in keep}}


@dataclass(frozen=True, kw_only=True)
class ScrubOptions(AttackOptions):
    """Scrub: s = ℓ_R − β(ℓ_S − ℓ_R) under R's plausibility mask."""

    verb: ClassVar[str] = "watermark scrub"
    mode: ClassVar[str] = "scrub"


@dataclass(frozen=True, kw_only=True)
class SpoofOptions(AttackOptions):
    """Spoof: s = ℓ_S + β(ℓ_S − ℓ_R) under S's plausibility mask."""

    verb: ClassVar[str] = "watermark spoof"
    mode: ClassVar[str] = "spoof"


ATTACKS: dict[str, type[AttackOptions]] = {"scrub": ScrubOptions, "spoof": SpoofOptions}


@dataclass(frozen=True, kw_only=True)
class DistillOptions(TrainFields):
    """``watermark distill``: train a student on an SFT dataset (optionally diluted with plain records)."""

    verb: ClassVar[str] = "watermark distill"

    data: str = option(help="SFT JSONL (instruction/input/output), e.g. written by scrub/spoof --data-only.", panel=PANEL_INPUT)
    output: str = option(help="Output model directory (HF layout; written atomically).", short="-o", panel=PANEL_OUTPUT)
    template: str = option("none", help="Prompt formatting of the instruction: none (as given), auto, plain, chat.",
                           choices=TEMPLATES, panel=PANEL_INPUT)
    dilute: float | None = option(None, help="Replace this fraction of the records by --dilute-with records (a weak reference).",
                                  min=0, max=1, min_exclusive=True, max_exclusive=True, panel=PANEL_INPUT)
    dilute_with: str | None = option(None, help="SFT JSONL of plain (unwatermarked) records for --dilute.", panel=PANEL_INPUT)
    device: str = device_option()
    dtype: str = option("float32", help="Training dtype of the weights: float32, bfloat16 or float16.",
                        choices=("float32", "bfloat16", "float16"), panel=PANEL_PERF)
    force: bool = force_option()

    def validate(self) -> None:
        super().validate()
        if self.student_init is None:
            raise UsageError("--student-init is required")
        if (self.dilute is None) != (self.dilute_with is None):
            raise UsageError("--dilute and --dilute-with go together")
