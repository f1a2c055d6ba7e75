"""Agreement between judge scores and human labels (``llmguard eval agree``).

Plain numpy implementations (no scipy at run time) of the statistics a judge-vs-human
agreement report needs; the test suite checks each one against scipy or a textbook example:

- :func:`pearson`, :func:`spearman` (Pearson of average ranks), :func:`kendall_tau_b`
  (ties corrected, the variant for Likert data);
- :func:`icc` — Shrout & Fleiss (1979) intraclass correlations from a two-way ANOVA; the report
  names the forms: ICC(2,1) two-way random, absolute agreement (penalises a constant offset
  between judge and human) and ICC(3,1) two-way mixed, consistency (does not);
- :func:`quadratic_weighted_kappa` on integer-rounded scores;
- :func:`pairwise_accuracy` with and without human ties;
- :func:`swap_consistency` for pairwise judge runs in both orders;
- :func:`bootstrap_ci`: percentile 95 % intervals, resampling *items* (clusters), not rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# correlation coefficients


def _as_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("x and y must be 1-D and of equal length")
    return a, b


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when fewer than 2 items or either side is constant."""
    a, b = _as_pair(x, y)
    if a.size < 2:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    if denom == 0.0:
        return math.nan
    return float(np.clip((da @ db) / denom, -1.0, 1.0))


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks starting at 1, ties get the average of their ranks (scipy's ``method='average'``)."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(a.size, dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's r of the average ranks."""
    a, b = _as_pair(x, y)
    return pearson(rankdata(a), rankdata(b))


def _tie_pairs(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    return float((counts * (counts - 1) / 2).sum())


def _concordance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(concordant, discordant) pair counts.

    Through the contingency table of distinct values when it is small (Likert data: O(u·v)),
    else by chunked pair comparison (O(n²) memory-bounded).
    """
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    if ua.size * ub.size <= 4_000_000:
        table = np.zeros((ua.size, ub.size), dtype=np.float64)
        np.add.at(table, (ia, ib), 1.0)
        # S[i, j] = number of items with a-index > i and b-index > j
        rev = table[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
        greater_both = np.zeros_like(table)
        greater_both[:-1, :-1] = rev[1:, 1:]
        # items with a-index > i and b-index < j
        cum = table[::-1, :].cumsum(0)[::-1, :].cumsum(1)
        greater_a_less_b = np.zeros_like(table)
        greater_a_less_b[:-1, 1:] = cum[1:, :-1]
        return float((table * greater_both).sum()), float((table * greater_a_less_b).sum())
    conc = disc = 0.0
    n = a.size
    step = max(1, 2_000_000 // max(n, 1))
    for s in range(0, n, step):
        da = np.sign(a[s : s + step, None] - a[None, :])
        db = np.sign(b[s : s + step, None] - b[None, :])
        prod = da * db
        conc += float((prod > 0).sum())
        disc += float((prod < 0).sum())
    return conc / 2.0, disc / 2.0


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b = (C − D) / sqrt((n0 − n1)(n0 − n2)), ties in x (n1) and y (n2) corrected."""
    a, b = _as_pair(x, y)
    n = a.size
    if n < 2:
        return math.nan
    conc, disc = _concordance(a, b)
    n0 = n * (n - 1) / 2.0
    denom = math.sqrt((n0 - _tie_pairs(a)) * (n0 - _tie_pairs(b)))
    if denom == 0.0:
        return math.nan
    return float(np.clip((conc - disc) / denom, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# intraclass correlation


def icc(ratings: np.ndarray | Sequence[Sequence[float]]) -> dict[str, float]:
    """Shrout & Fleiss (1979) ICCs of an ``n targets × k raters`` matrix (no missing cells).

    Returns ``ICC(1,1)``, ``ICC(2,1)``, ``ICC(3,1)`` and their average-measure forms
    ``ICC(1,k)``, ``ICC(2,k)``, ``ICC(3,k)``, from the mean squares of the two-way ANOVA:
    BMS (targets), JMS (raters), EMS (residual), WMS (within targets).
    """
    m = np.asarray(ratings, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 2:
        nan = math.nan
        return {k: nan for k in ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")}
    n, k = m.shape
    grand = m.mean()
    ss_total = float(((m - grand) ** 2).sum())
    ss_rows = float(k * ((m.mean(axis=1) - grand) ** 2).sum())
    ss_cols = float(n * ((m.mean(axis=0) - grand) ** 2).sum())
    ss_err = ss_total - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    wms = (ss_cols + ss_err) / (n * (k - 1))

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den != 0.0 else math.nan

    return {
        "ICC(1,1)": ratio(bms - wms, bms + (k - 1) * wms),
        "ICC(2,1)": ratio(bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n),
        "ICC(3,1)": ratio(bms - ems, bms + (k - 1) * ems),
        "ICC(1,k)": ratio(bms - wms, bms),
        "ICC(2,k)": ratio(bms - ems, bms + (jms - ems) / n),
        "ICC(3,k)": ratio(bms - ems, bms),
    }


# ---------------------------------------------------------------------------------------------
# categorical agreement


def quadratic_weighted_kappa(x: Sequence[float], y: Sequence[float]) -> float:
    """Cohen's κ with quadratic weights; scores are rounded to integers, categories span
    min..max of both raters. NaN when both raters use a single category."""
    a, b = _as_pair(x, y)
    if a.size == 0:
        return math.nan
    ai = np.rint(a).astype(np.int64)
    bi = np.rint(b).astype(np.int64)
    lo = int(min(ai.min(), bi.min()))
    hi = int(max(ai.max(), bi.max()))
    c = hi - lo + 1
    if c < 2:
        return math.nan
    observed = np.zeros((c, c), dtype=np.float64)
    np.add.at(observed, (ai - lo, bi - lo), 1.0)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    idx = np.arange(c)
    weights = (idx[:, None] - idx[None, :]) ** 2 / float((c - 1) ** 2)
    denom = float((weights * expected).sum())
    if denom == 0.0:
        return math.nan
    return float(1.0 - (weights * observed).sum() / denom)


def mae(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = _as_pair(x, y)
    return float(np.abs(a - b).mean()) if a.size else math.nan


def exact_agreement(x: Sequence[float], y: Sequence[float]) -> float:
    """Share of items whose integer-rounded scores are equal."""
    a, b = _as_pair(x, y)
    return float((np.rint(a) == np.rint(b)).mean()) if a.size else math.nan


def within_one(x: Sequence[float], y: Sequence[float]) -> float:
    """Share of items whose scores differ by at most 1."""
    a, b = _as_pair(x, y)
    return float((np.abs(a - b) <= 1.0 + 1e-9).mean()) if a.size else math.nan


# ---------------------------------------------------------------------------------------------
# preference agreement


def pairwise_accuracy(
    judge_diff: Sequence[float], human_diff: Sequence[float], *, tie_threshold: float = 0.0
) -> dict[str, float]:
    """Agreement on which of two responses is better.

    ``without_ties``: over pairs where the humans are not tied, the share where the judge's
    difference has the same sign (a judge tie counts as wrong).
    ``with_ties``: over all pairs, 3-way (A better / tie / B better) agreement; the judge calls a
    tie when ``|judge_diff| <= tie_threshold``, the humans when their difference is 0.
    """
    j, h = _as_pair(judge_diff, human_diff)
    out = {"pairs": float(j.size), "pairs_without_human_ties": float((h != 0).sum())}
    if j.size == 0:
        out.update(without_ties=math.nan, with_ties=math.nan)
        return out
    j_cls = np.where(np.abs(j) <= tie_threshold, 0, np.sign(j))
    h_cls = np.sign(h)
    strict = h != 0
    out["without_ties"] = float((np.sign(j[strict]) == h_cls[strict]).mean()) if strict.any() else math.nan
    out["with_ties"] = float((j_cls == h_cls).mean())
    return out


def swap_consistency(diff_ab: Sequence[float], diff_ba: Sequence[float], *, tie_threshold: float = 0.0) -> float:
    """Share of pairs whose verdict (A better / tie / B better) is the same in both presentation
    orders. Both differences are ``score(A) − score(B)`` in the *original* slots."""
    a, b = _as_pair(diff_ab, diff_ba)
    if a.size == 0:
        return math.nan

    def cls(d: np.ndarray) -> np.ndarray:
        return np.where(np.abs(d) <= tie_threshold, 0, np.sign(d))

    return float((cls(a) == cls(b)).mean())


# ---------------------------------------------------------------------------------------------
# bootstrap


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n_clusters: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(cluster_indices)`` over resampled clusters (items).

    ``statistic`` receives an index array (with repeats) of the clusters drawn; NaN draws are
    dropped. Returns (NaN, NaN) when fewer than 2 clusters or no finite draw.
    """
    if n_clusters < 2 or resamples < 1:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, n_clusters, size=n_clusters)
        v = statistic(idx)
        if v is not None and not math.isnan(v):
            values.append(v)
    if not values:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def score_distribution(values: Sequence[float]) -> dict[str, Any]:
    """Histogram of integer-rounded scores plus the share of the most common one."""
    a = np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64)
    if a.size == 0:
        return {"histogram": {}, "mode_share": math.nan, "std": math.nan}
    keys, counts = np.unique(a, return_counts=True)
    return {
        "histogram": {str(int(k)): int(c) for k, c in zip(keys, counts)},
        "mode_share": float(counts.max() / a.size),
        "std": float(np.asarray(values, dtype=np.float64).std()),
    }


SAMPLE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": pearson,
    "spearman": spearman,
    "kendall_tau_b": kendall_tau_b,
    "icc2_1_absolute_agreement": lambda j, h: icc(np.column_stack([j, h]))["ICC(2,1)"],
    "icc3_1_consistency": lambda j, h: icc(np.column_stack([j, h]))["ICC(3,1)"],
    "qwk": quadratic_weighted_kappa,
    "mae": mae,
    "exact": exact_agreement,
    "within_1": within_one,
}
