"""SOMF's parts against hand-computed values: merges, the Concrete mask, the mask file, task vectors,
and the masked model's forward (the aligned model as reference, the fine-tune under an all-ones mask)."""

from __future__ import annotations

import pytest
import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.realign.somf.mask import ConcreteMask, apply_mask, load_mask, mask_shape, save_mask
from llmguard.realign.somf.merge import MERGES, MergeSettings, dare_keep
from llmguard.realign.somf.options import SomfOptions


def test_task_arithmetic_average_and_ties_by_hand() -> None:
    t1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
    t2 = torch.tensor([-1.0, -1.0, 1.0, 4.0])
    s = MergeSettings(lam=0.5, density=0.5, seed=0)
    assert torch.equal(MERGES["ta"]("w", [t1, t2], s), torch.tensor([0.0, -1.5, 2.0, 2.25]))
    assert torch.equal(MERGES["avg"]("w", [t1, t2], s), torch.tensor([0.0, -0.75, 1.0, 1.125]))
    # TIES: top-2 magnitudes per vector: t1 -> [0, -2, 3, 0], t2 -> [-1, -1, 1, 4] has |4|, and a tie at 1:
    # kept entries are those with |x| >= the 2nd largest (1), so t2 keeps all four; signs of the sum
    # [-1, -3, 4, 4] elect (-, -, +, +); agreeing entries are summed.
    merged = MERGES["ties"]("w", [t1, t2], s)
    assert torch.equal(merged, 0.5 * torch.tensor([-1.0, -3.0, 4.0, 4.0]))


def test_dare_is_seeded_and_rescaled() -> None:
    t = torch.ones(1000)
    s = MergeSettings(lam=1.0, density=0.8, seed=3)
    a, b = MERGES["dare"]("w", [t], s), MERGES["dare"]("w", [t], s)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.25}
    assert 0.75 < float((a > 0).float().mean()) < 0.85
    assert not torch.equal(dare_keep("w", 0, t.shape, 0.8, 3, t.device), dare_keep("w", 1, t.shape, 0.8, 3, t.device))


def test_mask_rescale_rows_and_binary_rules() -> None:
    tau = torch.arange(12.0).reshape(3, 4)
    m = torch.tensor([[1.0], [0.0], [1.0]])
    out = apply_mask(tau, m)
    assert torch.allclose(out, tau * m * 1.5)  # mean of the row mask is 2/3
    assert torch.equal(apply_mask(tau, torch.zeros(3, 1)), torch.zeros(3, 4))
    assert mask_shape((3, 4), "row") == (3, 1) and mask_shape((3, 4), "element") == (3, 4) and mask_shape((5,), "row") == (5,)
    mask = ConcreteMask({"w": (3, 4)}, "element")
    with torch.no_grad():
        mask.logit("w").copy_(torch.linspace(-1, 1, 12).reshape(3, 4))
    top = mask.binary("top", 0.25)["w"]
    assert int(top.sum()) == 3 and bool(top.reshape(-1)[-3:].all())
    sig = mask.binary("sigmoid")["w"]
    assert torch.equal(sig.reshape(-1), torch.linspace(-1, 1, 12) > 0)
    assert torch.equal(mask.binary("official", seed=5)["w"], mask.binary("official", seed=5)["w"])
    # the relaxed sample is differentiable in the logits (no straight-through estimator)
    sample = mask.sample("w", torch.Generator().manual_seed(0))
    sample.sum().backward()
    assert mask.logit("w").grad is not None and bool((mask.logit("w").grad > 0).all())


def test_mask_file_round_trip_and_other_model(tmp_path) -> None:
    masks = {"a": torch.rand(5, 7) > 0.5, "b": torch.rand(3, 1) > 0.5}
    path = tmp_path / "m.safetensors"
    save_mask(path, masks, {"granularity": "element"})
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert stored["a"].dtype == torch.uint8 and stored["a"].numel() == 5 and stored["b"].numel() == 1  # bit-packed
    loaded, meta = load_mask(path, {"a": (5, 7), "b": (3, 1)}, "element")
    assert all(torch.equal(loaded[k], masks[k]) for k in masks) and meta["granularity"] == "element"
    with pytest.raises(InvalidInputError, match="another model"):
        load_mask(path, {"a": (5, 7), "c": (3, 1)}, "element")
    with pytest.raises(InvalidInputError, match="another model"):
        load_mask(path, {"a": (5, 8), "b": (3, 1)}, "element")


def test_options_validation() -> None:
    ok = dict(aligned="a", finetuned=["f"], preference="p", output="o")
    assert SomfOptions(**ok).effective_lambda == 1.0
    fusion = SomfOptions(**{**ok, "finetuned": ["f", "g"], "merge": "ties"})
    assert (fusion.effective_lambda, fusion.effective_density, fusion.effective_keep_ratio) == (1.0, 0.5, 0.9)
    assert SomfOptions(**ok).effective_keep_ratio == 0.8 and SomfOptions(**{**ok, "keep_ratio": 0.7}).effective_keep_ratio == 0.7
    for bad, message in ((dict(lam=0.0), "--lambda"), (dict(lam=-1.0), "--lambda"), (dict(keep_ratio=0.0), "--keep-ratio"),
                         (dict(merge="fisher"), "--merge"), (dict(density=0.5), "--density"), (dict(steps=0), "--steps"),
                         (dict(output=None), "--output"), (dict(preference=None), "--preference"), (dict(finetuned=[]), "--finetuned")):
        with pytest.raises(UsageError, match=message):
            SomfOptions(**{**ok, **bad})


def test_task_vector_spaces(tiny) -> None:
    from llmguard.realign.somf.task_vectors import open_task_vectors

    factor = open_task_vectors(tiny["aligned"], [tiny["ft1"]])
    assert factor.space == "factor" and factor.continuation_cosine > 0.8
    assert all(".lora_A." in n or ".lora_B." in n for n in factor.names)
    fused = open_task_vectors(tiny["aligned"], [tiny["ft1"], tiny["ft2"]])  # auto fuses ΔW: no factor cross terms
    assert fused.space == "weight" and all(n.endswith("proj.weight") for n in fused.names)
    assert open_task_vectors(tiny["aligned"], [tiny["ft1"], tiny["ft2"]], space="factor").space == "factor"
    fresh = open_task_vectors(tiny["aligned"], [tiny["ft_fresh"]])
    assert fresh.space == "weight" and all(n.endswith("proj.weight") for n in fresh.names)
    full = open_task_vectors(tiny["aligned_full"], [tiny["ft_full"]])
    assert full.space == "weight" and all(".layers." in n for n in full.names)
    cpu = torch.device("cpu")
    name = full.names[0]
    assert torch.allclose(full.taus(name, cpu)[0], _read(tiny["ft_full"], name) - _read(tiny["aligned_full"], name))
    with pytest.raises(InvalidInputError):
        open_task_vectors(tiny["aligned_full"], [tiny["other_arch"]])
    with pytest.raises(InvalidInputError, match="--space factor"):
        open_task_vectors(tiny["aligned"], [tiny["ft_fresh"]], space="factor")


def _read(root, name):
    from safetensors.torch import load_file

    return load_file(str(root / "model.safetensors"))[name].float()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["factor", "weight"])
def test_masked_model_reference_is_aligned_and_full_mask_is_the_finetune(tiny, kind) -> None:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from llmguard.realign.somf.masked_model import MaskedModel
    from llmguard.realign.somf.task_vectors import open_task_vectors

    if kind == "factor":
        tv = open_task_vectors(tiny["aligned"], [tiny["ft1"]])
        aligned = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), tiny["aligned"])
        finetuned = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), tiny["ft1"])
    else:
        tv = open_task_vectors(tiny["aligned_full"], [tiny["ft_full"]])
        aligned, finetuned = LlamaForCausalLM.from_pretrained(tiny["aligned_full"]), LlamaForCausalLM.from_pretrained(tiny["ft_full"])
    mask = ConcreteMask(tv.shapes, "element")
    masked = MaskedModel(tv, mask, "ta", MergeSettings(1.0, 0.8, 0), torch.device("cpu"))
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    masked.reference()
    assert torch.allclose(_logits(masked.model, ids), _logits(aligned, ids), atol=1e-5)
    masked.use_binary({n: torch.ones(mask_shape(s, "element"), dtype=torch.bool) for n, s in tv.shapes.items()})
    assert torch.allclose(_logits(masked.model, ids), _logits(finetuned, ids), atol=1e-5)
    # a relaxed sample flows gradients into the logits only
    masked.begin_step(torch.Generator().manual_seed(0))
    masked.model(input_ids=ids).logits.sum().backward()
    assert all(p.grad is not None for p in mask.parameters())
    assert all(p.grad is None for p in masked.model.parameters())
