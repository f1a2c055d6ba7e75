"""ΔW from adapter files equals PEFT's own merge, for every scaling rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from llmguard.io.lora import LoraAdapter, factor_inner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_lora  # noqa: E402


def _peft_merged_minus_base(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    plain = LlamaForCausalLM.from_pretrained(base).state_dict()
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter).merge_and_unload().state_dict()
    return {k: merged[k] - plain[k] for k in plain}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(r=4, alpha=8),
        dict(r=8, alpha=16, use_rslora=True),
        dict(r=4, alpha=8, rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 3}),
        dict(r=4, alpha=4, targets=("embed_tokens", "gate_proj")),
    ],
    ids=["plain", "rslora", "patterns", "embedding"],
)
def test_delta_matches_peft_merge(models: dict[str, Path], tmp_path: Path, kwargs: dict) -> None:
    adapter_dir = make_lora(models["base"], tmp_path / "adapter", seed=7, **kwargs)
    adapter = LoraAdapter(adapter_dir)
    expected = _peft_merged_minus_base(models["base"], adapter_dir)
    assert adapter.modules
    for module in adapter.modules.values():
        got = adapter.delta(module)
        assert torch.allclose(got, expected[module.target], atol=1e-5), module.name
    untouched = set(expected) - {m.target for m in adapter.modules.values()}
    assert all(expected[k].abs().max() == 0 for k in untouched)


def test_factor_space_inner_product_equals_dense(models: dict[str, Path]) -> None:
    a = LoraAdapter(models["lora_aligned"])
    b = LoraAdapter(models["lora_finetuned"])
    for name, module in a.modules.items():
        other = b.modules[name]
        a1, b1 = a.factors(module)
        a2, b2 = b.factors(other)
        dense = float((a.delta(module) * b.delta(other)).sum())
        assert float(factor_inner(a1, b1, a2, b2)) == pytest.approx(dense, rel=1e-4, abs=1e-6)
