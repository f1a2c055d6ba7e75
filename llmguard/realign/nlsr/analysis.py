"""Stages 2–3 per module: mask the reference delta's safety-critical units, then measure how
much of the reference the fine-tuned model still has inside that mask.

With an activation scorer this runs inside the calibration pass, layer by layer, as soon as a
layer's input statistics exist (they are then dropped): memory stays one layer's statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from llmguard.io.calibration import SecondMoment
from llmguard.realign.nlsr.inputs import NlsrInputs
from llmguard.realign.nlsr.mask_store import MaskStore, StoredMask
from llmguard.realign.nlsr.reference import Reference, source_weight
from llmguard.realign.nlsr.scoring import factor_masks
from llmguard.realign.nlsr.similarity import masked_delta_cosine, masked_factor_cosine


@dataclass
class ModuleResult:
    """One module: its similarity and the mask of reference units that a transplant would copy."""

    name: str
    similarity: float
    masked: int  # masked units (elements, rows or weights)
    units: int  # all units of the module
    parameters_masked: int  # scalar weights inside the mask
    mask_a: torch.Tensor | None = None  # element units: lora_A mask (r × d_in)
    mask_b: torch.Tensor | None = None  # element units: lora_B mask (d_out × r)
    delta_mask: torch.Tensor | StoredMask | None = None  # ΔW units: bool per output row, or per weight (d_out × d_in, on disk)
    calibration_tokens: int | None = None

    def unit_mask(self) -> torch.Tensor:
        """The ΔW-unit mask as a tensor (loaded from disk for weight units)."""
        assert self.delta_mask is not None, "no ΔW mask kept (dry run?)"
        return self.delta_mask.load() if isinstance(self.delta_mask, StoredMask) else self.delta_mask


@dataclass
class Analyzer:
    inputs: NlsrInputs
    reference: Reference
    scorer: str
    ratio: float
    keep: float
    device: torch.device
    #: where weight-unit masks go until the transplant; None keeps none (a dry run needs only similarities)
    masks: MaskStore | None = None
    results: dict[str, ModuleResult] = field(default_factory=dict)
    seconds: float = 0.0

    def analyze(self, name: str, stat: SecondMoment | None) -> ModuleResult:
        t0 = time.perf_counter()
        cov = stat.covariance().to(self.device) if stat is not None else None
        result = self._delta(name, cov) if self.inputs.strategy.delta_space else self._element(name, cov)
        result.calibration_tokens = stat.tokens if stat is not None else None
        self.results[name] = result
        self.seconds += time.perf_counter() - t0
        return result

    def _element(self, name: str, cov: torch.Tensor | None) -> ModuleResult:
        adapter = self.inputs.finetuned.adapter
        assert adapter is not None
        a_ref, b_ref = self.reference.factors(name, self.device)
        mask_a, mask_b = factor_masks(self.scorer, a_ref, b_ref, cov, self.ratio, self.keep)
        a_ft, b_ft = adapter.factors(adapter.modules[name], self.device)
        similarity = masked_factor_cosine(a_ft, b_ft, a_ref, b_ref, mask_a, mask_b)
        masked = int(mask_a.sum() + mask_b.sum())
        return ModuleResult(name, similarity, masked, a_ref.numel() + b_ref.numel(), masked, mask_a.cpu(), mask_b.cpu())

    def _delta(self, name: str, cov: torch.Tensor | None) -> ModuleResult:
        """ΔW units (rows or single weights, relative to the unaligned base)."""
        target = f"{name}.weight"
        delta_ref = self.reference.delta(target, self.device)
        if delta_ref is None:
            delta_ref = torch.zeros(self.inputs.base.meta[target].shape, device=self.device)
        unit = self.inputs.strategy
        assert unit.delta_mask is not None
        delta_ft = source_weight(self.inputs.finetuned, target, self.device)
        delta_ft.sub_(self.inputs.base.read(target).to(device=self.device, dtype=torch.float32))
        transposed = self.inputs.stored_orientation(name)
        if transposed:  # Conv1D stores (in × out); scores and rows are those of the (out × in) map
            delta_ref, delta_ft = delta_ref.T, delta_ft.T
        mask = unit.delta_mask(self.scorer, delta_ref, cov, self.ratio, self.keep)
        similarity = masked_delta_cosine(delta_ft, delta_ref, mask)
        masked = int(mask.sum())
        parameters = unit.parameters_in(masked, delta_ref.shape[1])
        if transposed and mask.dim() == 2:
            mask = mask.T.contiguous()  # weight units: flat indices of the stored layout
        kept: torch.Tensor | StoredMask | None = (self.masks.put(mask) if self.masks is not None else None) if unit.spills_masks else mask.cpu()
        return ModuleResult(name, similarity, masked, mask.numel(), parameters, delta_mask=kept)

    def on_layer(self, index: int, stats: dict[str, SecondMoment]) -> None:
        for name in self.inputs.modules:
            if name in stats:
                self.analyze(name, stats[name])
