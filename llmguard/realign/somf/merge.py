"""Fusion of masked task vectors, one tensor at a time: Merge({τ̃_i}) for ta, ties, dare and avg.

Every strategy is differentiable in the τ̃_i (the mask is trained through it) and deterministic
given the seed: TIES trims by a magnitude threshold, DARE draws its drop pattern from a generator
seeded by (seed, tensor name, model index), so training and the final write see the same drops.
With one fine-tune ``ta`` and ``avg`` are λ·τ̃ (λ = 1 by default: the identity); ``ties`` trims the
one vector to its top entries and ``dare`` drops a random part of it (the same operators, applied
to one vector), scaled by λ.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from llmguard.realign.somf.mask import apply_mask


@dataclass(frozen=True)
class MergeSettings:
    lam: float
    density: float
    seed: int


def task_arithmetic(name: str, vectors: Sequence[torch.Tensor], s: MergeSettings) -> torch.Tensor:
    """λ Σ τ̃_i (Ilharco et al.)."""
    return s.lam * torch.stack(list(vectors)).sum(0)


def average(name: str, vectors: Sequence[torch.Tensor], s: MergeSettings) -> torch.Tensor:
    """λ · mean τ̃_i (weight averaging; λ = 1 by default)."""
    return s.lam * torch.stack(list(vectors)).mean(0)


def _trim(vector: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (ties at the threshold kept)."""
    if density >= 1:
        return vector
    flat = vector.detach().abs().reshape(-1)
    k = max(1, int(round(density * flat.numel())))
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return vector * (vector.detach().abs() >= threshold)


def ties(name: str, vectors: Sequence[torch.Tensor], s: MergeSettings) -> torch.Tensor:
    """TIES (Yadav et al.): trim each vector to its top ``density``, elect a sign per entry from
    the sum, and add the entries that agree with it (the SOMF code's disjoint sum), times λ."""
    trimmed = torch.stack([_trim(v, s.density) for v in vectors])
    sign = torch.sign(trimmed.detach().sum(0))
    agree = (torch.sign(trimmed.detach()) == sign) & (sign != 0)
    return s.lam * (trimmed * agree).sum(0)


def dare_keep(name: str, index: int, shape: torch.Size, density: float, seed: int, device: torch.device) -> torch.Tensor:
    """DARE's seeded keep pattern for one (tensor, model): Bernoulli(density)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2**63))
    return (torch.rand(shape, generator=gen) < density).to(device)


def dare(name: str, vectors: Sequence[torch.Tensor], s: MergeSettings) -> torch.Tensor:
    """DARE (Yu et al.): drop entries with probability 1 − density, rescale by 1/density, λ Σ."""
    total = None
    for i, v in enumerate(vectors):
        kept = v * dare_keep(name, i, v.shape, s.density, s.seed, v.device) / s.density
        total = kept if total is None else total + kept
    assert total is not None
    return s.lam * total


def merge_masked(name: str, taus: Sequence[torch.Tensor], mask: torch.Tensor, merge: Callable, settings: MergeSettings,
                 rescale: bool = True, scales: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Merge({s_i · τ_i ⊙ m / mean(m)}): the one formula behind both the training forward pass
    (relaxed mask) and the written output (binary mask); ``scales=None`` is s_i = 1."""
    vectors = [apply_mask(t, mask, rescale) for t in taus]
    if scales is not None:
        vectors = [v * s for v, s in zip(vectors, scales)]
    return merge(name, vectors, settings)


MERGES: dict[str, Callable[[str, Sequence[torch.Tensor], MergeSettings], torch.Tensor]] = {
    "ta": task_arithmetic,
    "ties": ties,
    "dare": dare,
    "avg": average,
}
