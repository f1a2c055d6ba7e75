"""Stage 3: per-module cosine similarity of fine-tuned and reference deltas inside the mask.

Element units (the official code): s = cos(vec((M_B⊙B_ft)(M_A⊙A_ft)), vec((M_B⊙B_ref)(M_A⊙A_ref))),
computed in factor space (r × r products) without forming d_out × d_in matrices.
Row and weight units: s = cos(vec(M⊙ΔW_ft), vec(M⊙ΔW_ref)) over the masked rows or weights.
An undefined cosine (a zero vector) counts as 0: nothing of the reference survives there.
"""

from __future__ import annotations

import math

import torch

from llmguard.io.lora import factor_inner


def _cos(dot: float, n1: float, n2: float) -> float:
    if n1 <= 0 or n2 <= 0 or not math.isfinite(dot):
        return 0.0
    return max(-1.0, min(1.0, dot / math.sqrt(n1 * n2)))


def masked_factor_cosine(
    a_ft: torch.Tensor, b_ft: torch.Tensor, a_ref: torch.Tensor, b_ref: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor
) -> float:
    a1, b1 = (a_ft * mask_a).double(), (b_ft * mask_b).double()
    a2, b2 = (a_ref * mask_a).double(), (b_ref * mask_b).double()
    return _cos(factor_inner(a1, b1, a2, b2).item(), factor_inner(a1, b1, a1, b1).item(), factor_inner(a2, b2, a2, b2).item())


def masked_delta_cosine(delta_ft: torch.Tensor, delta_ref: torch.Tensor, mask: torch.Tensor) -> float:
    """``mask`` is a bool per row (d_out) or per weight (d_out × d_in)."""
    f = delta_ft[mask].double()
    r = delta_ref[mask].double()
    return _cos((f * r).sum().item(), (f * f).sum().item(), (r * r).sum().item())
