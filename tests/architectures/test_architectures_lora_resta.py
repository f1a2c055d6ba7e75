"""Adapters and linear combinations on every architecture: LoRA ΔW equals PEFT's own
``merge_and_unload`` (fused qkv, Conv1D fan_in_fan_out, rsLoRA, patterns, embeddings with tied
weights, modules_to_save, MoE experts through ``target_parameters``), RESTA equals its formula
bit for bit, ``inspect`` and ``diff`` see every changed tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoo
from zoo import ADAPTERS
from llmguard.io.checkpoint import open_checkpoint
from llmguard.io.compare import compare
from llmguard.io.sources import open_source
from llmguard.io.summary import summarize
from llmguard.realign.resta import run_resta
from llmguard.realign.resta_options import RestaOptions


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.read(n) for n in ckpt.names()}


def _peft_merged(base: Path, adapter: Path, out: Path) -> dict[str, torch.Tensor]:
    """PEFT's merge, saved by transformers (so in the checkpoint layout) and read back."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).merge_and_unload()
    model.save_pretrained(out)
    return _checkpoint_state(out)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_lora_delta_equals_peft_merge(adapters, name, tmp_path):
    adapter_dir, base = adapters[name]
    source = open_source(adapter_dir)
    merged = _peft_merged(base, adapter_dir, tmp_path / "merged")
    plain = _checkpoint_state(base)
    changed = {n for n in plain if not torch.equal(merged[n], plain[n])}
    ours = {n for n in plain if source.delta(n, torch.device("cpu")) is not None}
    assert changed and changed <= ours, f"tensors PEFT's merge changes that the adapter does not: {sorted(changed - ours)[:3]}"
    worst = 0.0
    for n in ours:
        delta = source.delta(n, torch.device("cpu"))
        worst = max(worst, (plain[n].float() + delta - merged[n].float()).abs().max().item())
    assert worst <= 3e-7, f"{name}: |θ + ΔW − PEFT merge| = {worst:.2e}"


def test_expert_lora_is_split_into_every_expert_tensor(adapters):
    source = open_source(adapters["mixtral-experts"][0])
    adapter = source.adapter
    assert {m.experts for m in adapter.parameter_modules.values()} == {4}
    targets = sorted(adapter.parameter_targets)
    assert len(targets) == 2 * 4 * 3  # 2 layers × 4 experts × (w1, w2, w3)
    assert all(".block_sparse_moe.experts." in t for t in targets)


@pytest.mark.parametrize("variant", list(zoo.VARIANTS))
def test_resta_is_its_formula_bit_for_bit(matrix, variant, tmp_path):
    paths = matrix[variant]
    gamma = 0.5
    run_resta(RestaOptions(finetuned=paths["finetuned"], aligned=paths["aligned"], unaligned=paths["base"], output=tmp_path / "out", gamma=gamma))
    f, a, u = (_checkpoint_state(paths[k]) for k in ("finetuned", "aligned", "base"))
    got = _checkpoint_state(tmp_path / "out")
    assert set(got) == set(f)
    for n, value in got.items():
        expected = (f[n].float() + gamma * a[n].float() - gamma * u[n].float()).to(f[n].dtype)
        assert torch.equal(value, expected), f"{variant}: {n}"


def test_diff_and_inspect_see_every_changed_tensor(adapters, matrix):
    adapter_dir, base = adapters["qwen2-patterns-lm-head"]
    rows = {r["module"]: r for r in compare(adapter_dir, matrix["qwen2"]["finetuned"], base=base)["modules"]}
    assert "lm_head" in rows, "modules_to_save lm_head changes the model: diff shows it"
    moe_dir, moe_base = adapters["mixtral-experts"]
    rows = {r["module"]: r for r in compare(moe_dir, matrix["mixtral"]["finetuned"], base=moe_base)["modules"]}
    assert "model.layers.1.block_sparse_moe.experts.3.w2" in rows
    assert rows["model.layers.1.block_sparse_moe.experts.3.w2"]["cosine"] is not None
    same = compare(moe_dir, moe_dir)["modules"]  # two adapters: factor space for q_proj, ΔW tensors for the experts
    assert len(same) == 2 + 24 and all(r["cosine"] == pytest.approx(1.0) for r in same)
    summary = summarize(moe_dir)
    assert summary["expert_parameter_modules"] and summary["modules"] == 2  # q_proj in 2 layers
    tied = summarize(adapters["llama-embedding-tied"][0])
    assert "model.embed_tokens.weight" in tied["modules_to_save"]


@pytest.mark.parametrize("name", ["mixtral-experts", "gpt2-fan-in-fan-out", "llama-embedding-tied"])
def test_resta_with_an_adapter_fine_tune(adapters, matrix, name, tmp_path):
    adapter_dir, base = adapters[name]
    variant = ADAPTERS[name][0]
    aligned = matrix[variant]["aligned"]
    run_resta(RestaOptions(finetuned=adapter_dir, aligned=aligned, unaligned=base, output=tmp_path / "out", gamma=0.5))
    source = open_source(adapter_dir)
    u, a, got = _checkpoint_state(base), _checkpoint_state(aligned), _checkpoint_state(tmp_path / "out")
    changed = 0
    for n, value in got.items():
        delta = source.delta(n, torch.device("cpu"))
        expected = u[n].float() + (0 if delta is None else delta) + 0.5 * (a[n].float() - u[n].float())
        assert torch.allclose(value.float(), expected, atol=1e-6), n
        changed += delta is not None
    assert changed >= len(source.adapter.parameter_targets) + len(source.adapter.modules)


def test_lm_head_modules_to_save_on_a_tied_base_is_refused(matrix, tmp_path):
    from zoo import make_adapter
    from llmguard.errors import InvalidInputError

    base = matrix["llama-tied"]["base"]
    adapter = make_adapter(base, tmp_path / "a", seed=0, r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(InvalidInputError, match="lm_head.weight' has no counterpart in the base checkpoint \\(the base ties it"):
        open_source(adapter)
