"""Calibrated statistics for green-token counts, in log space (no underflow at any z).

Under H0 (text written without the key) each scored token is green with probability γ, so the
green count G of T scored tokens is Binomial(T, γ). Two one-sided p-values:

- ``normal``: ``p = Φ̄(z)`` with ``z = (G − γT)/√(Tγ(1−γ))`` — what every reference reports; computed
  as ``log Φ̄(z)`` by ``erfc`` for moderate z and a continued fraction beyond, exact to double
  precision for any z (``scipy.stats.norm.sf`` returns 0 from z≈38);
- ``binomial``: the exact tail ``P(X ≥ G)`` (= ``betainc(G, T−G+1, γ)`` as in Sander et al.), summed
  in log space with ``lgamma``.

Only the standard library and numpy are used (scipy is a test dependency, used to check these).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN10 = math.log(10.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_norm_sf(z: float) -> float:
    """``log Φ̄(z) = log P(N(0,1) > z)``, accurate for every finite z."""
    z = float(z)
    if math.isnan(z):
        return math.nan
    if z == math.inf:
        return -math.inf
    if z == -math.inf:
        return 0.0
    if z < 0.0:
        return math.log1p(-0.5 * math.erfc(-z / math.sqrt(2.0)))
    if z < 5.0:
        return math.log(0.5 * math.erfc(z / math.sqrt(2.0)))
    # Φ̄(z) = φ(z) / (z + 1/(z + 2/(z + 3/(z + ...)))) — modified Lentz evaluation
    tiny = 1e-300
    f = z
    c = z
    d = 0.0
    for k in range(1, 500):
        d = z + k * d
        d = tiny if d == 0 else d
        c = z + k / c
        c = tiny if c == 0 else c
        d = 1.0 / d
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return -0.5 * z * z - _LOG_SQRT_2PI - math.log(f)


def norm_isf(p: float) -> float:
    """The z with ``Φ̄(z) = p`` (bisection on :func:`log_norm_sf`; used for ``--fpr``)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    target = math.log(p)
    lo, hi = -40.0, 40.0
    while log_norm_sf(hi) > target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if log_norm_sf(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def log_binom_sf(green: int, total: int, gamma: float) -> float:
    """``log P(X ≥ green)`` for ``X ~ Binomial(total, gamma)``, exact in log space."""
    g, t = int(green), int(total)
    if g <= 0:
        return 0.0
    if g > t:
        return -math.inf
    k = np.arange(g, t + 1, dtype=np.float64)
    lg = math.lgamma(t + 1) - _lgamma_vec(k + 1.0) - _lgamma_vec(t - k + 1.0)
    terms = lg + k * math.log(gamma) + (t - k) * math.log1p(-gamma)
    m = float(terms.max())
    return min(0.0, m + math.log(float(np.exp(terms - m).sum())))


def _lgamma_vec(x: np.ndarray) -> np.ndarray:
    """Vectorised log-gamma for x ≥ 1 (Stirling series beyond 10, exact recurrences below)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    small = x < 10
    if small.any():
        out[small] = [math.lgamma(v) for v in x[small]]
    big = ~small
    if big.any():
        y = x[big]
        inv = 1.0 / y
        inv2 = inv * inv
        series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 * (1 / 1680 - inv2 / 1188))))
        out[big] = (y - 0.5) * np.log(y) - y + _LOG_SQRT_2PI + series
    return out


def z_score(green: float, total: float, gamma: float) -> float:
    """``(G − γT)/√(Tγ(1−γ))`` as every reference computes it (nan when T = 0)."""
    if total <= 0:
        return math.nan
    return (green - gamma * total) / math.sqrt(total * gamma * (1 - gamma))


@dataclass
class TestResult:
    """The outcome of one green-count test."""

    num_tokens_scored: int
    num_green_tokens: int
    green_fraction: float
    z: float
    log_p: float  # natural log of the one-sided p-value
    p_method: str

    @property
    def p(self) -> float:
        return math.exp(self.log_p) if not math.isnan(self.log_p) else math.nan

    @property
    def log10_p(self) -> float:
        return self.log_p / LN10

    def as_dict(self) -> dict:
        return {
            "num_tokens_scored": self.num_tokens_scored,
            "num_green_tokens": self.num_green_tokens,
            "green_fraction": self.green_fraction,
            "z": self.z,
            "p": self.p,
            "log10_p": self.log10_p,
            "p_method": self.p_method,
        }


def green_test(green: int, total: int, gamma: float, method: str = "normal") -> TestResult:
    """z and the one-sided p-value (``normal`` from z, or exact ``binomial``)."""
    z = z_score(green, total, gamma)
    if total <= 0:
        log_p = math.nan
    elif method == "binomial":
        log_p = log_binom_sf(green, total, gamma)
    elif method == "normal":
        log_p = log_norm_sf(z)
    elif method == "hf-approx":
        # transformers <= 5.20 WatermarkDetector: p = 1 - 0.5(1 + sign(z)(1 - exp(-2z²/π))) (not calibrated)
        e = -2.0 * z * z / math.pi
        log_p = (math.log(0.5) + e) if z > 0 else (math.log1p(-0.5 * math.exp(e)) if z < 0 else math.log(0.5))
    else:
        raise ValueError(f"unknown p-value method {method!r}")
    frac = green / total if total > 0 else math.nan
    return TestResult(int(total), int(green), frac, z, log_p, method)


# ----------------------------------------------------------------------------- dedup

DEDUP_MODES = ("none", "ngram", "window", "window+token")


def dedup_keep(ngrams: np.ndarray, mode: str, prefix_len: int, seen: set | None = None) -> np.ndarray:
    """Which rows of ``ngrams`` to score under ``mode`` (first occurrence wins).

    - ``none``: every row;
    - ``ngram`` / ``window+token``: each distinct (context window, token) once — the reference's
      ``ignore_repeated_ngrams`` and Sander et al.'s tape v2;
    - ``window``: each distinct context window once (Sander et al.'s tape v1).

    ``seen`` (a set of tuples) makes the tape global across calls (corpus-level tests); rows already
    in it are dropped and new keys are added.
    """
    n = len(ngrams)
    if mode == "none" or n == 0:
        return np.ones(n, dtype=bool)
    if mode in ("ngram", "window+token"):
        keys = ngrams
    elif mode == "window":
        keys = ngrams[:, :prefix_len]
    else:
        raise ValueError(f"unknown dedup mode {mode!r}")
    keep = np.zeros(n, dtype=bool)
    if keys.shape[1] == 0:
        if seen is None or () not in seen:
            keep[0] = True
            if seen is not None:
                seen.add(())
        return keep
    _, first = np.unique(keys, axis=0, return_index=True)
    keep[first] = True
    if seen is not None:
        for i in np.flatnonzero(keep):
            k = tuple(keys[i].tolist())
            if k in seen:
                keep[i] = False
            else:
                seen.add(k)
    return keep
