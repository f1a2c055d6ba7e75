"""Statistics: log-space tails against scipy (a test-only dependency), dedup semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from llmguard.watermark.stats import dedup_keep, green_test, log_binom_sf, log_norm_sf, norm_isf, z_score


@pytest.mark.parametrize("z", [-40, -8, -5.0, -1, 0, 0.5, 3, 4.99, 5.0, 6, 10, 20, 37, 38, 39, 60, 150, 1000])
def test_log_norm_sf_matches_scipy_everywhere(z):
    want = special.log_ndtr(-z)
    assert log_norm_sf(z) == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_no_underflow_beyond_z38():
    assert stats.norm.sf(40) == 0.0  # what the references would report
    r = green_test(2000, 2000, 0.25)  # z ≈ 77
    assert r.z > 70 and r.p == 0.0  # p itself underflows a double ...
    assert r.log10_p == pytest.approx(special.log_ndtr(-r.z) / math.log(10), rel=1e-12)  # ... its log does not
    assert r.log10_p < -1000


@pytest.mark.parametrize(
    "g,t,gamma",
    [(0, 10, 0.25), (1, 1, 0.5), (5, 10, 0.25), (60, 100, 0.5), (300, 1000, 0.25), (900, 1000, 0.25),
     (26000, 100000, 0.25), (1000, 1000, 0.1)],
)
def test_log_binom_sf_matches_scipy(g, t, gamma):
    want = stats.binom.logsf(g - 1, t, gamma)
    got = log_binom_sf(g, t, gamma)
    if np.isfinite(want) and want > -700:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    # deep tail: compare with log of the regularised incomplete beta in mpmath-free form
    if g > 0:
        beta = special.betainc(g, t - g + 1, gamma)
        if beta > 0:
            assert got == pytest.approx(math.log(beta), rel=1e-8, abs=1e-12)
    assert got <= 0.0


def test_binomial_deep_tail_is_finite_and_ordered():
    a = log_binom_sf(950, 1000, 0.25)
    b = log_binom_sf(1000, 1000, 0.25)
    assert b == pytest.approx(1000 * math.log(0.25), rel=1e-12)
    assert b < a < -500


def test_norm_isf_roundtrip():
    for p in (0.05, 1e-3, 1e-10, 1e-100):
        assert math.exp(log_norm_sf(norm_isf(p))) == pytest.approx(p, rel=1e-9)
    assert norm_isf(1e-3) == pytest.approx(stats.norm.isf(1e-3), rel=1e-10)


def test_z_score_formula():
    assert z_score(25, 100, 0.25) == 0.0
    assert z_score(40, 100, 0.25) == pytest.approx(15 / math.sqrt(100 * 0.25 * 0.75))
    assert math.isnan(z_score(0, 0, 0.25))


def test_dedup_modes():
    ngrams = np.array([[1, 2], [1, 2], [1, 3], [4, 2], [1, 2]])
    assert dedup_keep(ngrams, "none", 1).tolist() == [True] * 5
    assert dedup_keep(ngrams, "ngram", 1).tolist() == [True, False, True, True, False]
    assert dedup_keep(ngrams, "window+token", 1).tolist() == [True, False, True, True, False]
    assert dedup_keep(ngrams, "window", 1).tolist() == [True, False, False, True, False]


def test_global_tape_across_texts():
    seen: set = set()
    a = dedup_keep(np.array([[1, 2], [3, 4]]), "window+token", 1, seen=seen)
    b = dedup_keep(np.array([[1, 2], [5, 6], [5, 6]]), "window+token", 1, seen=seen)
    assert a.tolist() == [True, True]
    assert b.tolist() == [False, True, False]


def test_hf_legacy_approximation_reproduced():
    # transformers <= 5.20 reported p = 1.9e-5 at z = 4 (exact 3.2e-5) and 0.0 at z = 10 (exact 7.6e-24)
    for z in (-2.0, 0.0, 1.0, 4.0, 6.0):
        legacy = 1 - 0.5 * (1 + np.sign(z) * (1 - np.exp(-2 * z**2 / np.pi)))
        t = 1000
        g = 0.25 * t + z * math.sqrt(t * 0.25 * 0.75)
        r = green_test(g, t, 0.25, "hf-approx")
        assert r.p == pytest.approx(legacy, rel=1e-12)
    assert green_test(250 + 10 * math.sqrt(187.5), 1000, 0.25, "hf-approx").log10_p < -20
