"""Stage 4: which modules get the transplant.

Deterministic (default): the ``budget`` least similar modules (a count, or a fraction of the
modules), or every module with similarity below ``threshold``. Ties are broken by model order.
Without ``budget`` or ``threshold`` the unit's default applies (``units.Unit.default_budget``):
half of the modules for rows and elements (on the testbed, patching every module with those
units destroyed the task), every module for single weights (their mask already picks a small
fraction of each module; docs/realign.md). :data:`DEFAULT_BUDGET` is the library default of
:func:`select` when a caller passes neither.

``official`` reproduces ``Adaptive_Search_Operation`` of ``xinykou/NLSR:src/safe_lora/inner.py``:
modules ranked by similarity in descending order get ranks N+1 … 2, min-max normalised to
n ∈ [0, 1] (most similar = 1), p = (prune_rate − ε) + 2ε·n, clipped to [0, 1], and
z ~ Bernoulli(p) after ``torch.manual_seed(seed)`` (CPU generator, modules in model order).
Note the direction: the *most* similar module is the most likely to be patched, although the
code's comment and the paper say the least similar ones should be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmguard.errors import UsageError

SELECT_MODES = ("least-similar", "official")
DEFAULT_BUDGET = "0.5"


@dataclass
class Selection:
    patched: list[bool]
    rule: str
    probabilities: list[float] | None = None

    @property
    def count(self) -> int:
        return sum(self.patched)


def parse_budget(text: str | float | int, total: int) -> int:
    """``0.5`` → half of ``total`` (rounded), ``12`` → 12 modules."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"--budget {text!r}: expected a module count (e.g. 12) or a fraction (e.g. 0.5)") from None
    if math.isnan(value) or value < 0:
        raise UsageError(f"--budget {text!r}: must be a non-negative count or a fraction in (0, 1]")
    if value <= 1.0 and not (isinstance(text, int) or (isinstance(text, str) and text.strip().isdigit())):
        return int(round(value * total))
    if value != int(value):
        raise UsageError(f"--budget {text!r}: a count must be a whole number (a fraction must be at most 1)")
    return min(int(value), total)


def select_budget(similarities: list[float], count: int) -> Selection:
    order = sorted(range(len(similarities)), key=lambda i: (similarities[i], i))
    chosen = set(order[:count])
    return Selection([i in chosen for i in range(len(similarities))], f"budget: the {count} least similar modules")


def select_threshold(similarities: list[float], threshold: float) -> Selection:
    return Selection([s < threshold for s in similarities], f"threshold: similarity < {threshold}")


def official_probabilities(similarities: list[float], prune_rate: float = 0.5, epsilon: float = 0.2) -> torch.Tensor:
    values = torch.tensor(similarities, dtype=torch.float32)
    n = values.numel()
    order = torch.argsort(values, dim=0, descending=True)
    ranks = torch.zeros_like(values)
    ranks[order] = torch.arange(n + 1, 1, step=-1, dtype=values.dtype)
    spread = ranks.max() - ranks.min()
    normalised = (ranks - ranks.min()) / spread if n > 1 else torch.ones_like(ranks)
    return ((prune_rate - epsilon) + normalised * (2 * epsilon)).clip(0, 1)


def select_official(similarities: list[float], *, prune_rate: float = 0.5, epsilon: float = 0.2, seed: int = 42) -> Selection:
    probabilities = official_probabilities(similarities, prune_rate, epsilon)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.bernoulli(probabilities, generator=generator)
    return Selection(
        [bool(z) for z in draws.tolist()],
        f"official: Bernoulli(p), p = {prune_rate - epsilon:g} + {2 * epsilon:g}·rank (most similar most likely), seed {seed}",
        [round(p, 6) for p in probabilities.tolist()],
    )


def select(
    similarities: list[float],
    *,
    mode: str = "least-similar",
    budget: str | float | int | None = None,
    threshold: float | None = None,
    prune_rate: float = 0.5,
    epsilon: float = 0.2,
    seed: int = 42,
) -> Selection:
    if mode not in SELECT_MODES:
        raise UsageError(f"--select {mode!r}: choose {' or '.join(SELECT_MODES)}")
    if mode == "official":
        if budget is not None or threshold is not None:
            raise UsageError("--select official draws modules at random; --budget/--threshold apply to --select least-similar")
        return select_official(similarities, prune_rate=prune_rate, epsilon=epsilon, seed=seed)
    if budget is not None and threshold is not None:
        raise UsageError("give --budget or --threshold, not both")
    if threshold is not None:
        return select_threshold(similarities, threshold)
    return select_budget(similarities, parse_budget(DEFAULT_BUDGET if budget is None else budget, len(similarities)))
