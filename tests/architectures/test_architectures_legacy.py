"""Checkpoints in older layouts that transformers still loads, read as stored:

- names without the base model's prefix: GPT-2 checkpoints on the Hub store ``h.0.attn.c_attn``
  (saved from ``GPT2Model``), not ``transformer.h.0.attn.c_attn``; a Llama saved from its bare
  backbone stores ``layers.0.…``. Every verb gives what it gives on transformers' own layout,
  bit for bit, under the renaming (NLSR + calibration, RESTA, LoRA deltas, SOMF, Safe LoRA).
- MoE experts stored fused on disk (the in-memory ``mlp.experts.gate_up_proj`` [E, 2·I, H]
  instead of one tensor per expert): RESTA, SOMF and Safe LoRA work on them; NLSR (which patches
  2-D linear weights) refuses up front with exit 3, and ``inspect`` says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from cli_utils import assert_one_line_error, no_partial_output, run_cli
from llmguard.io.architecture import Architecture, architecture_of, load_config, stored_shapes
from llmguard.io.checkpoint import open_checkpoint
from llmguard.io.sources import open_source
from llmguard.realign.nlsr.method import nlsr
from llmguard.realign.resta import run_resta
from llmguard.realign.resta_options import RestaOptions
from llmguard.realign.safelora.method import run_safelora
from llmguard.realign.safelora.options import SafeLoraOptions
from llmguard.realign.somf.method import run_somf
from llmguard.realign.somf.options import SomfOptions

ROLES = ("base", "aligned", "finetuned")
PREFIX = {"gpt2": "transformer.", "llama-tied": "model."}


def _state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.read(n) for n in ckpt.names()}


def _rewrite(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model.safetensors"):
            shutil.copy(f, dst / f.name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def legacy(matrix, tmp_path_factory) -> dict[str, dict[str, Path]]:
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("legacy")
    out: dict[str, dict[str, Path]] = {}
    for variant, prefix in PREFIX.items():
        out[variant] = {role: _rewrite(matrix[variant][role], root / variant / role,
                                       {k.removeprefix(prefix): v for k, v in _state(matrix[variant][role]).items()}) for role in ROLES}
    out["mixtral"] = {}
    for role in ROLES:  # the in-memory state dict, fused experts and all
        model = AutoModelForCausalLM.from_pretrained(matrix["mixtral"][role], dtype=torch.float32)
        out["mixtral"][role] = _rewrite(matrix["mixtral"][role], root / "mixtral" / role, model.state_dict())
    return out


@pytest.mark.parametrize("variant", list(PREFIX))
def test_prefixless_names_realign_like_the_saved_layout(matrix, legacy, adapters, variant, tmp_path):
    prefix, old, new = PREFIX[variant], matrix[variant], legacy[variant]
    assert not any(n.startswith(prefix + "layers.") or n.startswith(prefix + "h.") for n in _state(new["base"]))
    arch = architecture_of(new["base"])
    assert [m.tensor for m in arch.linear_maps] == [m.tensor.removeprefix(prefix) for m in architecture_of(old["base"]).linear_maps]
    # NLSR with an ActSVD calibration pass: the same patch, bit for bit, under the renaming
    options = dict(scorer="actsvd", unit="row", budget=0.5, calibration_pairs=tuple(zoo.PAIRS), template="plain",
                   calibration_mode="layerwise")
    a = nlsr(old["finetuned"], tmp_path / "a", aligned=old["aligned"], base=old["base"], **options)
    b = nlsr(new["finetuned"], tmp_path / "b", aligned=new["aligned"], base=new["base"], **options)
    assert [r["module"] for r in b.modules] == [r["module"].removeprefix(prefix) for r in a.modules]
    assert b.patched == a.patched > 0
    got, want = _state(tmp_path / "b"), _state(tmp_path / "a")
    assert set(got) == {n.removeprefix(prefix) for n in want}
    assert all(torch.equal(got[n.removeprefix(prefix)], v) for n, v in want.items())
    # RESTA: the same output under the renaming
    run_resta(RestaOptions(finetuned=new["finetuned"], aligned=new["aligned"], unaligned=new["base"], output=tmp_path / "r", gamma=0.5))
    run_resta(RestaOptions(finetuned=old["finetuned"], aligned=old["aligned"], unaligned=old["base"], output=tmp_path / "r0", gamma=0.5))
    got, want = _state(tmp_path / "r"), _state(tmp_path / "r0")
    assert all(torch.equal(got[n.removeprefix(prefix)], v) for n, v in want.items())
    # SOMF keep-all: the fine-tune, stored under its own names
    pref = tmp_path / "pref.jsonl"
    pref.write_text(json.dumps({"prompt": zoo.PAIRS[0][0], "chosen": zoo.PAIRS[0][1], "rejected": "the movie was great ."}) + "\n")
    run_somf(SomfOptions(aligned=new["aligned"], finetuned=(new["finetuned"],), preference=pref, output=tmp_path / "s", steps=1,
                         batch_size=1, keep_ratio=1.0, template="plain", device="cpu"))
    got, want = _state(tmp_path / "s"), _state(new["finetuned"])
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)


def test_lora_on_a_prefixless_base(matrix, legacy, adapters, tmp_path):
    """A PEFT adapter names ``transformer.h.0.attn.c_attn``; on the Hub layout its target is
    ``h.0.attn.c_attn.weight``: the same ΔW, diff rows, and the same Safe LoRA projection."""
    adapter, base = adapters["gpt2-fan-in-fan-out"]
    old_src, new_src = open_source(adapter, base=base), open_source(adapter, base=legacy["gpt2"]["base"])
    assert sorted(new_src.adapter.modules) == sorted(n.removeprefix("transformer.") for n in old_src.adapter.modules)
    for name in old_src.adapter.modules:
        target = f"{name}.weight"
        assert torch.equal(new_src.delta(target.removeprefix("transformer."), torch.device("cpu")), old_src.delta(target, torch.device("cpu")))
    outs = []
    for paths, out in ((matrix["gpt2"], tmp_path / "old"), (legacy["gpt2"], tmp_path / "new")):
        run_safelora(SafeLoraOptions(aligned=paths["aligned"], base=paths["base"], finetuned=adapter, output=out, threshold=1.0, device="cpu"))
        outs.append(load_file(str(out / "adapter_model.safetensors")))
    assert set(outs[0]) == set(outs[1]) and all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_second_moments_read_the_stored_names(matrix, legacy):
    from llmguard.io.calibration import CalibrationBatch, second_moments

    ids = torch.tensor([[5, 9, 12, 7, 30]])
    batches = [CalibrationBatch(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool))]
    old, new = matrix["gpt2"]["base"], legacy["gpt2"]["base"]
    want = second_moments(load_config(old), open_checkpoint(old).read, batches)
    got = second_moments(load_config(new), open_checkpoint(new).read, batches, stored=stored_shapes(new))
    assert set(got) == {n.removeprefix("transformer.") for n in want}
    assert all(torch.equal(got[n.removeprefix("transformer.")].xtx, s.xtx) for n, s in want.items())


def test_experts_fused_on_disk(matrix, legacy, adapters, tmp_path):
    new, old = legacy["mixtral"], matrix["mixtral"]
    fused = "model.layers.0.mlp.experts.gate_up_proj"
    assert _state(new["base"])[fused].shape == (4, 96, 32)
    arch = Architecture(load_config(new["base"]), stored=stored_shapes(new["base"]))
    assert arch.unsupported_fused() and not any(m.expert is not None for m in arch.linear_maps)
    # NLSR patches 2-D weights: refused up front, nothing written (CLI: exit 3, one line)
    out = tmp_path / "nlsr"
    r = run_cli("realign", "nlsr", "-f", new["finetuned"], "-a", new["aligned"], "--base", new["base"], "-o", out, "--scorer", "magnitude")
    assert_one_line_error(r, 3, "stores its experts fused on disk", "NLSR patches 2-D linear weights only")
    assert no_partial_output(out)
    assert architecture_of(new["base"]).describe()["experts_fused_on_disk"] == [
        f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("down_proj", "gate_up_proj")]  # inspect shows it
    # RESTA is its formula on the fused tensors
    run_resta(RestaOptions(finetuned=new["finetuned"], aligned=new["aligned"], unaligned=new["base"], output=tmp_path / "r", gamma=0.5))
    f, a, u = (_state(new[k]) for k in ROLES[::-1])
    got = _state(tmp_path / "r")
    assert all(torch.equal(got[n], (f[n].float() + 0.5 * a[n].float() - 0.5 * u[n].float()).to(f[n].dtype)) for n in f)
    # SOMF keep-all: the fine-tune
    pref = tmp_path / "pref.jsonl"
    pref.write_text(json.dumps({"prompt": zoo.PAIRS[0][0], "chosen": zoo.PAIRS[0][1], "rejected": "the movie was great ."}) + "\n")
    run_somf(SomfOptions(aligned=new["aligned"], finetuned=(new["finetuned"],), preference=pref, output=tmp_path / "s", steps=1,
                         batch_size=1, keep_ratio=1.0, template="plain", device="cpu"))
    got = _state(tmp_path / "s")
    assert set(got) == set(f) and all(torch.equal(got[n], f[n]) for n in f)
    # Safe LoRA on expert LoRA: the same projection as on the per-expert layout
    adapter, _ = adapters["mixtral-experts"]
    outs = []
    for paths, out in ((old, tmp_path / "sl-old"), (new, tmp_path / "sl-new")):
        result = run_safelora(SafeLoraOptions(aligned=paths["aligned"], base=paths["base"], finetuned=adapter, output=out, threshold=1.0,
                                              device="cpu"))
        outs.append(load_file(str(out / "adapter_model.safetensors")))
    assert any(r.get("tensors") == [fused] for r in result.modules)
    assert set(outs[0]) == set(outs[1])
    assert all(torch.allclose(outs[0][k], outs[1][k], rtol=1e-5, atol=1e-7) for k in outs[0])
