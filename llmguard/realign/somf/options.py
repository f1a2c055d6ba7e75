"""Every parameter of ``realign somf``, its default, help text and validation, in one frozen object.

The CLI command is derived from these fields (their ``help`` metadata), the manifest is written
from :meth:`SomfOptions.parameters`, and :meth:`SomfOptions.validate` runs once, before any input
is opened, so a bad option is one error line and nothing is read or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmguard.errors import UsageError

GRANULARITIES = ("element", "row")
SPACES = ("auto", "factor", "weight")
MASK_MODES = ("top", "sigmoid", "official")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class SomfOptions:
    """Options of SOMF (subspace-oriented model fusion), validated once by :meth:`validate`."""

    aligned: Path = _opt(None, "Initially aligned checkpoint or LoRA adapter (the safe model A).", flag="--aligned", short="-a", panel="Input")
    finetuned: tuple[Path, ...] = _opt((), "Fine-tuned checkpoint or LoRA adapter F_i (repeat for fusion; one shared mask).", flag="--finetuned", short="-f", panel="Input")
    preference: Path = _opt(None, "Safety preference pairs (JSONL/JSON/CSV with prompt, chosen, rejected).", flag="--preference", short="-p", panel="Input")
    output: Path | None = _opt(None, "Output directory (written atomically; LoRA in, LoRA out).", flag="--output", short="-o", panel="Output")
    base: Path | None = _opt(None, "Base checkpoint of adapter inputs whose adapter_config does not name a local one.", flag="--base", panel="Input")
    prompt_field: str = _opt("prompt", "Prompt field of the preference data.", panel="Preference data")
    chosen_field: str = _opt("chosen", "Preferred (safe) response field.", panel="Preference data")
    rejected_field: str = _opt("rejected", "Dispreferred (harmful) response field.", panel="Preference data")
    template: str = _opt("auto", "Prompt template: auto, chat, plain, none or a string with {prompt}.", panel="Preference data")
    max_length: int = _opt(256, "Longest tokenised prompt + response (longer pairs are truncated).", panel="Preference data")
    space: str = _opt("auto", "Task-vector space: auto (LoRA factors when every fine-tune continues the aligned adapter, else weights), factor or weight (W(F_i) − W(A); checkpoint output).", panel="Method")
    granularity: str = _opt("element", "Mask unit: element (one logit per task-vector entry, the paper) or row (one per output row).", panel="Method")
    temperature: float = _opt(0.5, "Concrete (relaxed Bernoulli) temperature.", panel="Method")
    init_logit: float = _opt(0.0, "Initial mask logit (0: keep probability 0.5).", panel="Method")
    beta: float = _opt(0.1, "DPO β (sigmoid loss).", panel="Method")
    steps: int = _opt(150, "Mask training steps.", panel="Method")
    lr: float = _opt(1e-2, "Adam learning rate of the mask logits (the paper's code used 1e-3 for one fine-tune with more, larger steps).", panel="Method")
    batch_size: int = _opt(16, "Preference pairs per step.", panel="Method")
    seed: int = _opt(0, "Seed of the mask samples, the batches, DARE drops and --mask-mode official.", panel="Method")
    mask_mode: str = _opt("top", "Final binary mask: top (the --keep-ratio largest logits of each tensor), sigmoid (σ(ℓ) > 0.5) or official (one seeded relaxed-Bernoulli sample > 0.5, as the paper's code).", panel="Method")
    keep_ratio: float = _opt(0.8, "--mask-mode top: fraction of units kept per tensor.", panel="Method")
    rescale: bool = _opt(True, "Rescale the kept task vector by 1/mean(mask) (the paper); --no-rescale keeps it as is.", panel="Method")
    merge: str = _opt("ta", "Fusion of the masked task vectors: ta, ties, dare or avg (identity for one fine-tune).", panel="Fusion")
    lam: float | None = _opt(None, "Fusion weight λ (default 1 for one fine-tune; ta 0.3, ties 0.4, dare 0.3 for fusion, the paper's).", flag="--lambda", panel="Fusion")
    density: float | None = _opt(None, "TIES: fraction of entries kept per vector (default 0.2); DARE: fraction kept, 1 − p (default 0.8).", panel="Fusion")
    mask_file: Path | None = _opt(None, "Reuse a trained mask (somf_mask.safetensors) instead of training one.", panel="Method")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N.", panel="Performance")
    dtype: str = _opt("auto", "Output dtype: auto (as the inputs), float32, bfloat16, float16.", panel="Output")
    max_shard_size: str = _opt("5GB", "Largest output shard (checkpoint output).", panel="Output")
    force: bool = _opt(False, "Replace an existing output directory.", panel="Output")
    allow_pickle: bool = _opt(False, "Allow reading pickle (.bin) checkpoints.", panel="Input")
    dry_run: bool = _opt(False, "Train the mask and report; write nothing.", panel="Output")

    @property
    def fusion(self) -> bool:
        return len(self.finetuned) > 1

    @property
    def effective_lambda(self) -> float:
        if self.lam is not None:
            return self.lam
        if not self.fusion:
            return 1.0
        return {"ta": 0.3, "ties": 0.4, "dare": 0.3, "avg": 1.0}[self.merge]

    @property
    def effective_density(self) -> float:
        if self.density is not None:
            return self.density
        return 0.2 if self.merge == "ties" else 0.8

    def validate(self) -> "SomfOptions":
        """Raise :class:`UsageError` (exit 2) for contradictory or out-of-range options."""
        from llmguard.realign.somf.merge import MERGES

        if self.aligned is None:
            raise UsageError("--aligned is required")
        if not self.finetuned:
            raise UsageError("pass at least one --finetuned model")
        if self.preference is None and self.mask_file is None:
            raise UsageError("--preference is required (or reuse a trained mask with --mask-file)")
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required (or pass --dry-run)")
        if self.granularity not in GRANULARITIES:
            raise UsageError(f"--granularity {self.granularity!r}: choose {', '.join(GRANULARITIES)}")
        if self.space not in SPACES:
            raise UsageError(f"--space {self.space!r}: choose {', '.join(SPACES)}")
        if self.mask_mode not in MASK_MODES:
            raise UsageError(f"--mask-mode {self.mask_mode!r}: choose {', '.join(MASK_MODES)}")
        if self.merge not in MERGES:
            raise UsageError(f"--merge {self.merge!r}: choose {', '.join(MERGES)}")
        for name, value in (("--temperature", self.temperature), ("--beta", self.beta)):
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"{name} {value}: must be a positive number")
        if self.lam is not None and not (self.lam > 0 and math.isfinite(self.lam)):
            raise UsageError(f"--lambda {self.lam}: must be a positive number")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr {self.lr}: must be a positive number")
        if self.steps < 1 and self.mask_file is None:
            raise UsageError(f"--steps {self.steps}: must be at least 1")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.max_length < 2:
            raise UsageError(f"--max-length {self.max_length}: must be at least 2")
        if not 0 < self.keep_ratio <= 1:
            raise UsageError(f"--keep-ratio {self.keep_ratio}: must be in (0, 1]")
        if self.density is not None and not 0 < self.density <= 1:
            raise UsageError(f"--density {self.density}: must be in (0, 1]")
        if self.density is not None and self.merge in ("ta", "avg"):
            raise UsageError(f"--density applies to --merge ties or dare, not {self.merge}")
        return self

    def parameters(self) -> dict[str, Any]:
        """Every option (paths as strings) plus the effective defaults, for the manifest."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [str(v) for v in value]
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        out.update(effective_lambda=self.effective_lambda,
                   effective_density=self.effective_density if self.merge in ("ties", "dare") else None)
        return out
