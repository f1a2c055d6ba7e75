"""Agreement statistics against scipy and textbook values (Shrout & Fleiss 1979)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from llmguard.eval import agreement as ag

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges, and the ICCs they report
# (Table 4, two decimals).
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)
SHROUT_FLEISS_ICC = {
    "ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71,
    "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91,
}


def test_icc_matches_shrout_fleiss_table():
    got = ag.icc(SHROUT_FLEISS)
    for form, value in SHROUT_FLEISS_ICC.items():
        assert got[form] == pytest.approx(value, abs=0.005), form


def test_icc_two_raters_hand_computed():
    # judge = human + 1 everywhere: perfect consistency, imperfect absolute agreement.
    human = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    got = ag.icc(np.column_stack([human + 1.0, human]))
    assert got["ICC(3,1)"] == pytest.approx(1.0)
    # by hand: BMS = 2*2.5 = 5, JMS = 5*0.5 / 1 = 2.5, EMS = 0 -> ICC(2,1) = 5 / (5 + 2*2.5/5) = 5/6
    assert got["ICC(2,1)"] == pytest.approx(5.0 / 6.0)


scores = st.lists(st.integers(0, 5), min_size=3, max_size=60)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_correlations_equal_scipy(data):
    x = data.draw(scores)
    y = data.draw(st.lists(st.integers(0, 5), min_size=len(x), max_size=len(x)))
    xs, ys = np.array(x, float), np.array(y, float)
    if xs.std() == 0 or ys.std() == 0:
        assert math.isnan(ag.pearson(xs, ys))
        return
    assert ag.pearson(xs, ys) == pytest.approx(stats.pearsonr(xs, ys).statistic, abs=1e-9)
    assert ag.spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-9)
    assert ag.kendall_tau_b(xs, ys) == pytest.approx(stats.kendalltau(xs, ys, variant="b").statistic, abs=1e-9)


def test_kendall_continuous_path_equals_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=2100)
    y = x + rng.normal(size=2100)
    # > 4M contingency cells forces the pairwise path
    assert ag.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-9)
    assert ag.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)


def test_rankdata_equals_scipy():
    x = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    np.testing.assert_allclose(ag.rankdata(x), stats.rankdata(x))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_qwk_equals_moment_identity(data):
    # For integer scores with quadratic weights over the span of categories used,
    # kappa_w = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2) (population moments).
    x = np.array(data.draw(scores), float)
    y = np.array(data.draw(st.lists(st.integers(0, 5), min_size=len(x), max_size=len(x))), float)
    denom = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    got = ag.quadratic_weighted_kappa(x, y)
    if denom == 0:
        assert math.isnan(got)
        return
    expected = 2 * ((x - x.mean()) * (y - y.mean())).mean() / denom
    assert got == pytest.approx(expected, abs=1e-9)


def test_qwk_textbook_value():
    # Perfect agreement is 1; complete reversal on a 3-point scale is -1.
    assert ag.quadratic_weighted_kappa([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    assert ag.quadratic_weighted_kappa([0, 2], [2, 0]) == pytest.approx(-1.0)


def test_simple_agreements():
    j = [1, 2, 3, 5]
    h = [1, 3, 5, 5]
    assert ag.mae(j, h) == pytest.approx(0.75)
    assert ag.exact_agreement(j, h) == pytest.approx(0.5)
    assert ag.within_one(j, h) == pytest.approx(0.75)


def test_pairwise_accuracy_ties():
    judge = [1.0, -2.0, 0.0, 0.5, 3.0]
    human = [2.0, -1.0, 1.0, 0.0, 0.0]
    out = ag.pairwise_accuracy(judge, human)
    # strict pairs: idx 0 (right), 1 (right), 2 (judge tie: wrong) -> 2/3
    assert out["without_ties"] == pytest.approx(2 / 3)
    # all pairs, 3 classes: right, right, wrong(0 vs +), wrong(+ vs 0), wrong -> 2/5
    assert out["with_ties"] == pytest.approx(2 / 5)
    out = ag.pairwise_accuracy(judge, human, tie_threshold=0.5)
    # idx 3 now a judge tie and a human tie -> 3/5
    assert out["with_ties"] == pytest.approx(3 / 5)


def test_swap_consistency():
    assert ag.swap_consistency([1, -1, 0, 2], [1, 1, 0, 3]) == pytest.approx(0.75)


def test_bootstrap_ci_covers_the_mean():
    rng = np.random.default_rng(0)
    values = rng.normal(loc=2.0, size=200)
    lo, hi = ag.bootstrap_ci(lambda idx: float(values[idx].mean()), len(values), resamples=500, seed=3)
    assert lo < values.mean() < hi
    assert hi - lo < 0.6
    # deterministic for a seed
    assert (lo, hi) == ag.bootstrap_ci(lambda idx: float(values[idx].mean()), len(values), resamples=500, seed=3)
