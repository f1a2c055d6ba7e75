"""The pieces against their definitions: calibration statistics, ActSVD, masks, similarity, selection."""

from __future__ import annotations

import math

import pytest
import torch

from llmguard.errors import UsageError
from llmguard.io.calibration import CalibrationBatch, load_config, second_moments
from llmguard.io.checkpoint import open_checkpoint
from llmguard.realign.nlsr.scoring import actsvd_project, element_scores, factor_masks, row_mask, top_fraction, weight_mask
from llmguard.realign.nlsr.selection import official_probabilities, parse_budget, select
from llmguard.realign.nlsr.similarity import masked_factor_cosine, masked_delta_cosine


def _batches() -> list[CalibrationBatch]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (3, 10), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 7:] = 0
    select_ = attention.bool().clone()
    select_[:, :3] = False
    return [CalibrationBatch(ids[:2], attention[:2], select_[:2]), CalibrationBatch(ids[2:], attention[2:], select_[2:])]


def test_layerwise_and_whole_pass_equal_hooks_on_the_full_model(tiny):
    from transformers import AutoModelForCausalLM

    checkpoint = open_checkpoint(tiny["base"])
    config = load_config(tiny["base"])
    batches = _batches()
    layerwise = second_moments(config, checkpoint.read, batches, mode="layerwise")
    whole = second_moments(config, checkpoint.read, batches, mode="whole")
    model = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()
    expected: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[current["select"].reshape(-1)]
            expected[name] = expected.get(name, 0) + x.T @ x
        return fn

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        for batch in batches:
            current["select"] = batch.select
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert set(layerwise) == set(expected) == set(whole)
    tokens = sum(int(b.select.sum()) for b in batches)
    for name, value in expected.items():
        assert layerwise[name].tokens == tokens
        torch.testing.assert_close(layerwise[name].xtx, value, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(whole[name].xtx, value, rtol=1e-5, atol=1e-5)
    # q/k/v read the same input: one statistic shared, computed once
    q = "model.layers.0.self_attn.q_proj"
    assert layerwise[q] is layerwise["model.layers.0.self_attn.k_proj"]
    assert set(layerwise[q].modules) == {q, "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"}


@pytest.mark.parametrize("shape", [(4, 24), (24, 4), (12, 12)])
def test_actsvd_from_second_moments_equals_svd_of_stored_outputs(shape):
    """The official code: S = X Wᵀ, V = top-q right singular vectors of S, W ← V Vᵀ W."""
    g = torch.Generator().manual_seed(1)
    d_out, d_in = shape
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    x = torch.randn(200, d_in, generator=g, dtype=torch.float64) @ torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    s = x @ w.T
    _, _, vh = torch.linalg.svd(s, full_matrices=False)
    q = math.floor(0.8 * min(d_out, d_in))
    v = vh[:q].T
    expected = v @ v.T @ w
    got = actsvd_project(w.float(), (x.T @ x / x.shape[0]).float(), keep=0.8)
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-3)


def test_masks_keep_the_top_fraction_per_tensor():
    score = torch.arange(100.0).reshape(10, 10)
    mask = top_fraction(score, 0.2)
    assert mask.sum() == 20 and mask.reshape(-1)[80:].all()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 32, generator=g), torch.randn(16, 4, generator=g)
    cov = torch.eye(32)
    cov[0, 0] = 1000.0  # a loud input feature dominates the Wanda score of A's first column
    ma, mb = factor_masks("wanda", a, b, cov, 0.2)
    assert ma.sum() == math.ceil(0.2 * a.numel()) and mb.sum() == math.ceil(0.2 * b.numel())
    assert ma[:, 0].all()
    rows = row_mask("magnitude", torch.diag(torch.arange(1.0, 11.0)), None, 0.3)
    assert rows.tolist() == [False] * 7 + [True] * 3


def test_weight_units_score_single_entries_of_the_delta():
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(16, 32, generator=g)
    cov = torch.eye(32)
    cov[3, 3] = 1e4  # Wanda: the loud input column outranks everything else
    mask = weight_mask("wanda", delta, cov, 0.1)
    assert mask.shape == delta.shape and mask.sum() == math.ceil(0.1 * delta.numel())
    assert mask[:, 3].all()
    torch.testing.assert_close(element_scores("wanda", delta, cov), delta.abs() * cov.diagonal().sqrt()[None, :])
    torch.testing.assert_close(element_scores("actsvd", delta, cov), actsvd_project(delta, cov).abs())
    magnitude = weight_mask("magnitude", delta, None, 0.25)
    assert (delta.abs()[magnitude].min() >= delta.abs()[~magnitude].max())
    with pytest.raises(UsageError, match="needs calibration data"):
        weight_mask("actsvd", delta, None, 0.2)


def test_mask_store_round_trips_packed_bits(tmp_path):
    from llmguard.realign.nlsr.mask_store import MaskStore

    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(7, 13, generator=g) > 0.6, torch.rand(3, generator=g) > 0.5, torch.ones(64, 8, dtype=torch.bool)]
    with MaskStore.beside(tmp_path / "out") as store:
        stored = [store.put(m) for m in masks]
        assert all(s.path.stat().st_size == math.ceil(m.numel() / 8) for s, m in zip(stored, masks))
        for s, m in zip(stored, masks):
            assert torch.equal(s.load(), m)
    assert list(tmp_path.iterdir()) == []


def test_masked_similarities():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 20, generator=g), torch.randn(12, 4, generator=g)
    ma, mb = torch.rand(4, 20, generator=g) > 0.5, torch.rand(12, 4, generator=g) > 0.5
    a2, b2 = a + 0.3 * torch.randn(4, 20, generator=g), b + 0.3 * torch.randn(12, 4, generator=g)
    expected = torch.nn.functional.cosine_similarity(((b * mb) @ (a * ma)).reshape(-1), ((b2 * mb) @ (a2 * ma)).reshape(-1), dim=0)
    assert masked_factor_cosine(a, b, a2, b2, ma, mb) == pytest.approx(expected.item(), abs=1e-5)
    assert masked_factor_cosine(a, b, a, b, ma, mb) == pytest.approx(1.0)
    d1, d2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    rows = torch.tensor([True, False] * 4)
    assert masked_delta_cosine(d1, d2, rows) == pytest.approx(torch.nn.functional.cosine_similarity(d1[rows].reshape(-1), d2[rows].reshape(-1), dim=0).item(), abs=1e-6)
    assert masked_delta_cosine(torch.zeros(8, 5), d2, rows) == 0.0


def test_official_selection_reproduces_the_code_and_its_direction():
    sims = [0.9, 0.1, 0.5, 0.3]
    p = official_probabilities(sims)
    assert p.tolist() == pytest.approx([0.7, 0.3, 0.5 + 0.2 / 3 * 1, 0.3 + 0.4 / 3])
    sims = [0.01 * i for i in range(40)]
    chosen = select(sims, mode="official", seed=42)
    torch.manual_seed(42)
    expected = torch.bernoulli(official_probabilities(sims))
    assert chosen.patched == [bool(z) for z in expected.tolist()]
    assert chosen.probabilities[-1] == pytest.approx(0.7) and chosen.probabilities[0] == pytest.approx(0.3)


def test_deterministic_selection():
    sims = [0.5, 0.2, 0.9, 0.2, 0.7]
    assert select(sims, budget="2").patched == [False, True, False, True, False]
    assert select(sims).patched.count(True) == 2  # default: half, rounded
    assert select(sims, budget="0.6").patched == [True, True, False, True, False]
    assert select(sims, threshold=0.6).patched == [True, True, False, True, False]
    assert parse_budget("1", 5) == 1 and parse_budget("1.0", 5) == 5 and parse_budget("12", 5) == 5
    with pytest.raises(UsageError):
        select(sims, budget="2", threshold=0.5)
    with pytest.raises(UsageError):
        parse_budget("2.5", 5)
    with pytest.raises(UsageError):
        select(sims, mode="official", budget="2")
