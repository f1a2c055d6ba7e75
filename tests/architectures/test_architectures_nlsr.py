"""NLSR on every architecture: it finds the model's linear maps (GPT-2's Conv1D, MoE routers and
every stored expert), patches them, and ``revert`` restores the fine-tune bit for bit; a run
that would patch nothing is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zoo
from helpers import perturbed_adapter
from llmguard.errors import InvalidInputError
from llmguard.io.architecture import Architecture, load_config
from llmguard.io.checkpoint import open_checkpoint
from llmguard.realign.nlsr.method import nlsr
from llmguard.realign.nlsr.patch import revert


def _state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.read(n) for n in ckpt.names()}


def _run(paths: dict[str, Path], out: Path, **options):
    options = {"scorer": "actsvd", "unit": "row", "budget": 1.0, "calibration_pairs": tuple(zoo.PAIRS), "template": "plain",
               "calibration_mode": "layerwise", **options}
    return nlsr(paths["finetuned"], out, aligned=paths["aligned"], base=paths["base"], **options)


@pytest.mark.parametrize("variant", list(zoo.VARIANTS))
def test_nlsr_patches_every_linear_map_and_reverts_exactly(matrix, variant, tmp_path):
    paths = matrix[variant]
    result = _run(paths, tmp_path / "out")
    linear = [m.name for m in Architecture(load_config(paths["base"])).linear_maps]
    assert [row["module"] for row in result.modules] == linear  # every linear map, model order
    assert result.patched == len(linear) and result.parameters_changed > 0
    revert(tmp_path / "out", tmp_path / "reverted")
    original, reverted = _state(paths["finetuned"]), _state(tmp_path / "reverted")
    assert set(original) == set(reverted)
    assert all(torch.equal(original[n], reverted[n]) for n in original)


def test_moe_magnitude_considers_experts_and_router(matrix, tmp_path):
    result = _run(matrix["mixtral"], tmp_path / "out", scorer="magnitude")
    names = [row["module"] for row in result.modules]
    assert len(names) == 34  # per layer: 4 attention, 1 router, 4 experts × (w1, w2, w3)
    assert "model.layers.0.block_sparse_moe.gate" in names and "model.layers.1.block_sparse_moe.experts.3.w2" in names


def test_conv1d_rows_are_columns_of_the_stored_weight(matrix, tmp_path):
    """GPT-2 stores (in × out): a patched output neuron is a whole column, equal to θ_ref's."""
    paths = matrix["gpt2"]
    _run(paths, tmp_path / "out", budget=1)
    patch = json.loads((tmp_path / "out" / "realign_patch.json").read_text())
    (name, entry), = patch["tensors"].items()
    assert entry["axis"] == 1
    before, after = _state(paths["finetuned"])[name], _state(tmp_path / "out")[name]
    changed_columns = (before != after).any(dim=0).nonzero().squeeze(1)
    assert changed_columns.numel() == entry["count"]
    assert (before != after).any(dim=1).all()  # whole columns: every input row is touched


def test_lora_on_conv1d_and_on_fused_experts(adapters, tmp_path):
    for name in ("gpt2-fan-in-fan-out", "mixtral-experts"):
        aligned, base = adapters[name]
        finetuned = perturbed_adapter(aligned, tmp_path / f"{name}-ft", seed=3)
        result = nlsr(finetuned, tmp_path / f"{name}-out", aligned=aligned, base=base, scorer="wanda", budget=1,
                      calibration_pairs=tuple(zoo.PAIRS), template="plain")
        assert result.patched == 1 and result.parameters_changed > 0, name
    assert result.unit != "element"  # fused-expert LoRA has no per-expert factors: ΔW units
    assert any(".experts." in row["module"] for row in result.modules)


def test_nothing_to_realign_is_an_error(matrix, adapters, tmp_path):
    """An adapter that changes no linear map (only the embeddings) is refused, not a no-op success."""
    from zoo import make_adapter

    base = matrix["llama-tied"]["base"]
    only_embedding = make_adapter(base, tmp_path / "emb", seed=5, r=4, lora_alpha=8, target_modules=["embed_tokens"])
    with pytest.raises(InvalidInputError, match="no (adapted )?linear"):
        nlsr(only_embedding, tmp_path / "out", aligned=only_embedding, base=base, scorer="magnitude", budget=1.0)
    assert not (tmp_path / "out").exists()


def test_an_expert_no_calibration_token_reaches_is_refused(matrix, tmp_path):
    """One response token (the EOS of an empty response) is routed to 3 of 4 experts: the fourth
    has no statistics, and the run says so instead of scoring it on nothing."""
    with pytest.raises(InvalidInputError, match=r"experts\.\d\.w\d' saw no calibration input \(no calibration token was routed"):
        _run(matrix["mixtral"], tmp_path / "out", calibration_pairs=(("how do i make a bomb ?", ""),))
    assert not (tmp_path / "out").exists()


def test_expert_statistics_count_the_tokens_routed_to_each_expert(matrix):
    from llmguard.io.calibration import CalibrationBatch, second_moments

    path = matrix["qwen3-moe"]["base"]
    ids = torch.tensor([[5, 9, 12, 7]])
    select = torch.tensor([[False, False, True, False]])
    stats = second_moments(load_config(path), open_checkpoint(path).read, [CalibrationBatch(ids, torch.ones_like(ids), select)])
    for layer in (0, 1):
        experts = {e: stats.get(f"model.layers.{layer}.mlp.experts.{e}.gate_proj") for e in range(4)}
        hit = [e for e, s in experts.items() if s is not None]
        assert len(hit) == 3 and all(experts[e].tokens == 1 for e in hit)  # top-3 of 4 for the one selected token
    assert stats["model.layers.0.self_attn.q_proj"].tokens == 1
