"""Stage 2: safety-critical units of the reference delta, scored and masked per tensor.

Units are LoRA *elements* (the official code: one scalar of ``lora_A`` or ``lora_B``), the
*rows* (output neurons) of ΔW_ref, or single *weights* of ΔW_ref (scored like elements).
Scorers, all from the input second moment C = E[xxᵀ] of the module in the reference model (no
stored activations):

- ``magnitude``: |w| (rows: ‖ΔW_i‖₂). Needs no calibration data.
- ``wanda``: |w_ij|·‖x_j‖ with ‖x_j‖ = √C_jj (Wei et al.; for ``lora_B`` the input is A·x,
  whose second moment is A C Aᵀ). Rows: Σ_j |ΔW_ij|·‖x_j‖.
- ``actsvd`` (default, Wei et al. 2024 as used by NLSR): project W onto the top-q left singular
  directions of its outputs S = X Wᵀ and take |V_q V_qᵀ W|. The right singular vectors of S
  are the eigenvectors of Sᵀ S = W C Wᵀ, so they come from C, not from stored activations.
  q = ⌊keep·rank⌋ with keep = 0.8 as in the official code (⌊0.8·min(d_out, d_in)⌋ of a LoRA
  factor; for ΔW rows the numerical rank of W C Wᵀ, so a low-rank delta is really projected).
  For ``lora_B`` (d_out × r) the d_out × d_out matrix is never formed: with A C Aᵀ = L Lᵀ the
  directions are the left singular vectors of B L (d_out × r).

Masks keep the top ``ratio`` fraction of units per tensor (⌈ratio·n⌉, ties broken by index).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmguard.errors import UsageError
from llmguard.registry import Registry


def top_fraction(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of the ⌈ratio·n⌉ highest scores (same shape as ``score``)."""
    flat = score.reshape(-1)
    k = max(1, min(flat.numel(), math.ceil(ratio * flat.numel() - 1e-9)))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat.float(), k, sorted=False).indices] = True
    return mask.reshape(score.shape)


def _sym_sqrt_factor(c: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ = C for a symmetric PSD C (eigendecomposition, negatives clipped)."""
    values, vectors = torch.linalg.eigh(c.double())
    return (vectors * values.clamp_min(0).sqrt()).to(torch.float32)


def _projected(w: torch.Tensor, output_directions: torch.Tensor, energies: torch.Tensor, keep: float) -> torch.Tensor:
    """V_q V_qᵀ W for the top-q output directions by energy, q = ⌊keep·numerical rank⌋."""
    order = torch.argsort(energies, descending=True)
    top = energies[order[0]].item() if energies.numel() else 0.0
    rank = int((energies > top * 1e-10).sum().item()) if top > 0 else 0
    q = max(1, math.floor(keep * rank)) if rank else 0
    if q == 0:
        return torch.zeros_like(w)
    v = output_directions[:, order[:q]]
    return v @ (v.T @ w)


def actsvd_project(w: torch.Tensor, input_cov: torch.Tensor, keep: float = 0.8) -> torch.Tensor:
    """W projected onto the top ⌊keep·rank⌋ singular directions of its outputs X Wᵀ."""
    d_out, d_in = w.shape
    if d_out <= d_in:
        g = w @ input_cov @ w.T
        values, vectors = torch.linalg.eigh(((g + g.T) / 2).double())
        return _projected(w, vectors.to(w.dtype), values.to(w.dtype), keep)
    # tall W (lora_B, d_out × r): left singular vectors of W L with L Lᵀ = C
    m = w @ _sym_sqrt_factor(input_cov)
    u, s, _ = torch.linalg.svd(m.double(), full_matrices=False)
    return _projected(w, u.to(w.dtype), (s**2).to(w.dtype), keep)


Score = Callable[[torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


@dataclass(frozen=True)
class Scorer:
    """One way to score the units of a matrix W (d_out × d_in) whose input has second moment C.

    ``elements`` gives one score per entry (LoRA elements, weight units), ``rows`` one per output
    row (row units). ``needs_calibration``: C must come from a calibration pass.
    """

    name: str
    needs_calibration: bool
    elements: Score
    rows: Score


def _input_norms(cov: torch.Tensor) -> torch.Tensor:
    return cov.diagonal().clamp_min(0).sqrt()[None, :]


SCORERS: Registry[Scorer] = Registry("NLSR scorer")


def register_scorer(scorer: Scorer) -> Scorer:
    return SCORERS.add(scorer.name, scorer)


register_scorer(Scorer("actsvd", True, lambda w, cov, keep: actsvd_project(w, cov, keep).abs(),
                       lambda d, cov, keep: actsvd_project(d, cov, keep).norm(dim=1)))
register_scorer(Scorer("wanda", True, lambda w, cov, keep: w.abs() * _input_norms(cov),
                       lambda d, cov, keep: (d.abs() * _input_norms(cov)).sum(dim=1)))
register_scorer(Scorer("magnitude", False, lambda w, cov, keep: w.abs(), lambda d, cov, keep: d.norm(dim=1)))

#: scorers that need a calibration pass (kept for callers of the old tuple)
ACTIVATION_SCORERS = tuple(name for name, scorer in SCORERS.items() if scorer.needs_calibration)


def get_scorer(name: str, cov: torch.Tensor | None) -> Scorer:
    """The registered scorer ``name``, refusing one that needs C when there is none."""
    scorer = SCORERS.get(name)
    if scorer is None:
        raise UsageError(f"--scorer {name!r}: choose {', '.join(SCORERS)}")
    if scorer.needs_calibration and cov is None:
        raise UsageError(f"--scorer {name} needs calibration data")
    return scorer


def element_scores(scorer: str, w: torch.Tensor, cov: torch.Tensor | None, keep: float = 0.8) -> torch.Tensor:
    """One score per entry of a matrix W (d_out × d_in) whose input has second moment ``cov``."""
    return get_scorer(scorer, cov).elements(w, cov, keep)


def factor_scores(scorer: str, a: torch.Tensor, b: torch.Tensor, cov: torch.Tensor | None, keep: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every element of A (r × d_in) and B (d_out × r, scale folded in)."""
    cov_b = None if cov is None else a @ cov @ a.T  # second moment of B's input A·x
    return element_scores(scorer, a, cov, keep), element_scores(scorer, b, cov_b, keep)


def row_scores(scorer: str, delta: torch.Tensor, cov: torch.Tensor | None, keep: float = 0.8) -> torch.Tensor:
    """One score per output row (neuron) of ΔW_ref."""
    return get_scorer(scorer, cov).rows(delta, cov, keep)


def factor_masks(scorer: str, a: torch.Tensor, b: torch.Tensor, cov: torch.Tensor | None, ratio: float, keep: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    score_a, score_b = factor_scores(scorer, a, b, cov, keep)
    return top_fraction(score_a, ratio), top_fraction(score_b, ratio)


def row_mask(scorer: str, delta: torch.Tensor, cov: torch.Tensor | None, ratio: float, keep: float = 0.8) -> torch.Tensor:
    return top_fraction(row_scores(scorer, delta, cov, keep), ratio)


def weight_mask(scorer: str, delta: torch.Tensor, cov: torch.Tensor | None, ratio: float, keep: float = 0.8) -> torch.Tensor:
    """Top ``ratio`` of the single weights of ΔW_ref (a d_out × d_in boolean mask)."""
    return top_fraction(element_scores(scorer, delta, cov, keep), ratio)
