"""Stage 1: the safety reference model, ΔW_ref, never written to disk.

ExPO (the paper): θ_ref = θ_aligned + α(θ_aligned − θ_base), i.e. ΔW_ref = (1+α)·ΔW_aligned.
For a LoRA aligned model the factor split matters for the element-level transplant: ExPO mode
scales B by (1+α) and keeps A, so ΔW scales by exactly 1+α (α = 0.9 → ×1.9).

``official`` mode reproduces ``xinykou/NLSR:src/expo-lora.py``, which multiplies *both* LoRA
factors by 2α (``P ← α·P + α·P``), so ΔW scales by (2α)² (α = 0.9 → ×3.24); it needs an adapter.

A prepared reference (``--reference``) is used as given: ΔW_ref = θ_reference − θ_base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.checkpoint import Checkpoint
from llmguard.io.sources import WeightSource

AMPLIFY_MODES = ("expo", "official")


def source_weight(source: WeightSource, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """θ for one tensor of a source (base tensor plus the adapter's ΔW), float32."""
    value = source.base.read(name).to(device=device, dtype=torch.float32)
    delta = source.delta(name, torch.device(device))
    return value if delta is None else value.add_(delta)


def same_checkpoint(a: Checkpoint, b: Checkpoint) -> bool:
    return a.root.resolve() == b.root.resolve()


@dataclass
class Reference:
    """ΔW_ref relative to ``base`` (the unaligned model the aligned delta is measured from)."""

    base: Checkpoint
    aligned: WeightSource | None
    prepared: WeightSource | None = None
    alpha: float = 0.9
    mode: str = "expo"

    def __post_init__(self) -> None:
        if self.mode not in AMPLIFY_MODES:
            raise UsageError(f"--amplify-mode {self.mode!r}: choose expo or official")
        if self.prepared is None and self.aligned is None:
            raise UsageError("a reference needs --aligned or --reference")
        if self.prepared is None and self.mode == "official" and (self.aligned is None or self.aligned.adapter is None):
            raise UsageError("--amplify-mode official scales both LoRA factors: it needs a LoRA --aligned adapter (use expo for full checkpoints)")

    # -- coefficients -----------------------------------------------------------------------
    @property
    def factor_scales(self) -> tuple[float, float]:
        """(scale of A, scale of B) applied to the aligned adapter's factors."""
        if self.mode == "official":
            return 2 * self.alpha, 2 * self.alpha
        return 1.0, 1.0 + self.alpha

    @property
    def coefficient(self) -> float:
        """ΔW_ref / ΔW_aligned (1 for a prepared reference)."""
        if self.prepared is not None:
            return 1.0
        sa, sb = self.factor_scales
        return sa * sb

    def describe(self) -> dict:
        if self.prepared is not None:
            return {"reference": str(self.prepared.path), "delta_scale": 1.0}
        return {"amplify_mode": self.mode, "alpha": self.alpha, "delta_scale": round(self.coefficient, 6), "factor_scales": list(self.factor_scales)}

    # -- ΔW space ---------------------------------------------------------------------------
    def delta(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """ΔW_ref for one tensor (float32), None where the reference equals the base."""
        device = torch.device(device)
        if self.prepared is not None:
            if self.prepared.adapter is not None and same_checkpoint(self.prepared.base, self.base):
                return self.prepared.delta(name, device)
            return source_weight(self.prepared, name, device).sub_(self.base.read(name).to(device=device, dtype=torch.float32))
        assert self.aligned is not None
        if self.aligned.adapter is not None and same_checkpoint(self.aligned.base, self.base):
            delta = self.aligned.delta(name, device)
            return None if delta is None else delta.mul_(self.coefficient)
        aligned = source_weight(self.aligned, name, device)
        return aligned.sub_(self.base.read(name).to(device=device, dtype=torch.float32)).mul_(self.coefficient)

    def weight(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """θ_ref for one tensor (float32): what the calibration pass runs."""
        if self.prepared is not None:
            return source_weight(self.prepared, name, device)
        base = self.base.read(name).to(device=device, dtype=torch.float32)
        delta = self.delta(name, device)
        return base if delta is None else base.add_(delta)

    # -- factor space (LoRA element units) --------------------------------------------------
    def factors(self, module: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(A_ref, B_ref) with the LoRA scale folded into B, as ``LoraAdapter.factors``."""
        source = self.prepared if self.prepared is not None else self.aligned
        if source is None or source.adapter is None:
            raise InvalidInputError("element-level NLSR needs a LoRA reference (the aligned or --reference adapter)")
        lora = source.adapter.modules.get(module)
        if lora is None:
            raise InvalidInputError(f"{source.path}: the reference adapter has no module {module!r}")
        a, b = source.adapter.factors(lora, device)
        if self.prepared is None:
            sa, sb = self.factor_scales
            a, b = a * sa, b * sb
        return a, b
