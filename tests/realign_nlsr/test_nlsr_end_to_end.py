"""``realign nlsr`` / ``realign revert`` end to end on tiny real models, library and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cli_utils import assert_error, run_cli, run_cli_in_process
from llmguard.io.checkpoint import open_checkpoint
from llmguard.io.lora import LoraAdapter
from llmguard.realign.nlsr import nlsr
from llmguard.realign.nlsr.reference import Reference, source_weight
from llmguard.io.sources import open_source


def _weights(path):
    files = sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        if not f.name.startswith("realign_patch"):
            out.update(load_file(f))
    return out


def test_element_mode_transplants_masked_reference_values(tiny, tmp_path):
    out = tmp_path / "out"
    result = nlsr(tiny["ft_lora"], out, aligned=tiny["aligned"], calibration=tiny["calib"], scorer="actsvd", budget="4",
                  unit="element")
    assert result.unit == "element" and result.patched == 4
    table = json.loads((out / "nlsr_modules.json").read_text())
    assert len(table) == 14 and sum(r["patched"] for r in table) == 4
    patched_modules = {r["module"] for r in table if r["patched"]}
    least = {r["module"] for r in sorted(table, key=lambda r: r["similarity"])[:4]}
    assert patched_modules == least
    ft, new = load_file(tiny["ft_lora"] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(ft) == set(new)
    aligned = load_file(tiny["aligned"] / "adapter_model.safetensors")
    patch = load_file(out / "realign_patch.safetensors")
    for key in ft:
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        if module not in patched_modules:
            assert torch.equal(ft[key], new[key]), key
            continue
        index = patch[f"{key}::index"]
        scale = 1.0 if ".lora_A." in key else 1.9  # ExPO α = 0.9 on B
        expected = ft[key].clone().reshape(-1)
        expected[index] = (aligned[key] * scale).reshape(-1)[index]
        torch.testing.assert_close(new[key].reshape(-1), expected)
        assert index.numel() == pytest.approx(0.2 * ft[key].numel(), abs=1)
    manifest = json.loads((out / "llmguard.json").read_text())
    names = [s["name"] for s in manifest["stages"]]
    assert names == ["open inputs", "reference", "calibration data", "calibration pass + scoring", "select", "transplant + write"]
    assert all(s["seconds"] >= 0 and s["peak_rss_bytes"] > 0 for s in manifest["stages"])
    assert manifest["parameters"]["alpha"] == 0.9 and manifest["stages"][1]["delta_scale"] == pytest.approx(1.9)
    # the realigned adapter loads in PEFT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["base"]), out)


def test_official_amplification_scales_both_factors(tiny):
    aligned = open_source(tiny["aligned"], role="aligned")
    ref = Reference(aligned.base, aligned, alpha=0.9, mode="official")
    module = next(iter(aligned.adapter.modules))
    a, b = aligned.adapter.factors(aligned.adapter.modules[module])
    ra, rb = ref.factors(module)
    torch.testing.assert_close(ra, 1.8 * a)
    torch.testing.assert_close(rb, 1.8 * b)
    assert ref.coefficient == pytest.approx(3.24)


@pytest.mark.parametrize("scorer", ["wanda", "magnitude"])
def test_full_finetune_rows_and_exact_revert(tiny, tmp_path, scorer):
    out = tmp_path / "out"
    result = nlsr(tiny["ft_full"], out, aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"], scorer=scorer,
                  unit="row")
    assert result.unit == "row" and result.patched == 7  # half of 14 modules: the row unit's default budget
    ft, new = _weights(tiny["ft_full"]), _weights(out)
    patch = load_file(out / "realign_patch.safetensors")
    aligned_src = open_source(tiny["aligned_full"])
    ref = Reference(open_checkpoint(tiny["base"]), aligned_src, alpha=0.9)
    changed = 0
    for name in ft:
        if f"{name}::index" not in patch:
            assert torch.equal(ft[name], new[name]), name
            continue
        rows = patch[f"{name}::index"]
        assert rows.numel() == pytest.approx(0.2 * ft[name].shape[0], abs=1)
        torch.testing.assert_close(new[name][rows], ref.weight(name)[rows])
        keep = torch.ones(ft[name].shape[0], dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(new[name][keep], ft[name][keep])
        changed += 1
    assert changed == 7
    back = tmp_path / "back"
    r = run_cli("realign", "revert", out, "-o", back)
    assert r.returncode == 0, r.stderr
    restored = _weights(back)
    assert set(restored) == set(ft) and all(torch.equal(restored[k], ft[k]) for k in ft)
    assert (back / "config.json").is_file()


def test_full_finetune_weight_units_and_exact_revert(tiny, tmp_path):
    out = tmp_path / "out"
    result = nlsr(tiny["ft_full"], out, aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"], scorer="wanda", unit="weight", mask_ratio=0.1,
                  budget="0.5")
    assert result.unit == "weight" and result.patched == 7
    ft, new = _weights(tiny["ft_full"]), _weights(out)
    patch = load_file(out / "realign_patch.safetensors")
    assert json.loads((out / "realign_patch.json").read_text())["unit"] == "elements"
    ref = Reference(open_checkpoint(tiny["base"]), open_source(tiny["aligned_full"]), alpha=0.9)
    patched = [name for name in ft if f"{name}::index" in patch]
    assert len(patched) == 7
    for name in ft:
        if name not in patched:
            assert torch.equal(ft[name], new[name]), name
            continue
        index = patch[f"{name}::index"]
        assert index.numel() == pytest.approx(0.1 * ft[name].numel(), abs=1)
        torch.testing.assert_close(new[name].reshape(-1)[index], ref.weight(name).reshape(-1)[index])
        keep = torch.ones(ft[name].numel(), dtype=torch.bool)
        keep[index] = False
        assert torch.equal(new[name].reshape(-1)[keep], ft[name].reshape(-1)[keep])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the on-disk mask store is gone
    table = json.loads((out / "nlsr_modules.json").read_text())
    assert {row["unit"] for row in table} == {"weight"} and all(row["parameters_masked"] == row["masked_units"] for row in table)
    back = tmp_path / "back"
    r = run_cli_in_process("realign", "revert", out, "-o", back)
    assert r.returncode == 0, r.stderr
    restored = _weights(back)
    assert set(restored) == set(ft) and all(torch.equal(restored[k], ft[k]) for k in ft)


def test_fresh_adapter_is_compared_in_delta_space(tiny, tmp_path):
    result = nlsr(tiny["ft_fresh"], tmp_path / "out", aligned=tiny["aligned"], scorer="magnitude", budget="0.25")
    assert result.unit == "weight" and result.patched == 4  # --unit auto: single ΔW weights
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = _weights(out)
    src = open_source(tiny["ft_fresh"])
    patch = load_file(out / "realign_patch.safetensors")
    name = next(n for n in merged if f"{n}::index" not in patch and ".layers." in n and n.endswith("_proj.weight"))
    torch.testing.assert_close(merged[name], source_weight(src, name))


def test_continued_adapter_with_row_units_writes_a_checkpoint_and_reverts(tiny, tmp_path):
    """``--unit row`` on a LoRA fine-tune that continues the aligned adapter (what the testbed's DEV
    search chooses on seed 0): ΔW rows as units, the merged model out, revertible to the merged fine-tune."""
    out = tmp_path / "out"
    result = nlsr(tiny["ft_lora"], out, aligned=tiny["aligned"], calibration=tiny["calib"], scorer="wanda", unit="row")
    assert result.unit == "row" and result.patched == 7
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    aligned, ft_src = open_source(tiny["aligned"]), open_source(tiny["ft_lora"])
    ref = Reference(aligned.base, aligned, alpha=0.9)
    new, patch = _weights(out), load_file(out / "realign_patch.safetensors")
    patched = [n for n in new if f"{n}::index" in patch]
    assert len(patched) == 7
    for name in new:
        ft_weight = source_weight(ft_src, name)
        if name not in patched:
            torch.testing.assert_close(new[name], ft_weight)
            continue
        rows = patch[f"{name}::index"]
        torch.testing.assert_close(new[name][rows], ref.weight(name)[rows])
        assert not torch.allclose(new[name][rows], ft_weight[rows]), name  # the transplant did something
        keep = torch.ones(new[name].shape[0], dtype=torch.bool)
        keep[rows] = False
        torch.testing.assert_close(new[name][keep], ft_weight[keep])
    back = tmp_path / "back"
    r = run_cli_in_process("realign", "revert", out, "-o", back)
    assert r.returncode == 0, r.stderr
    restored = _weights(back)
    for name in new:
        torch.testing.assert_close(restored[name], source_weight(ft_src, name))


def test_cli_end_to_end_element_mode_with_revert(tiny, tmp_path):
    out = tmp_path / "realigned"
    r = run_cli("realign", "nlsr", "-a", tiny["aligned"], "-f", tiny["ft_lora"], "-c", tiny["calib"], "-o", out, "--budget", "0.5",
                "--unit", "element")
    assert r.returncode == 0, r.stderr
    assert "patched 7 of 14 modules" in r.stdout and "◆" in r.stdout and "model.layers.1.mlp.down_proj" in r.stdout
    back = tmp_path / "back"
    r = run_cli("realign", "revert", out, "-o", back, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["values_restored"] > 0
    ft, restored = load_file(tiny["ft_lora"] / "adapter_model.safetensors"), load_file(back / "adapter_model.safetensors")
    assert set(ft) == set(restored) and all(torch.equal(ft[k], restored[k]) for k in ft)
    assert LoraAdapter(back).rank == LoraAdapter(tiny["ft_lora"]).rank
    # a second revert of the reverted model is refused: it no longer holds the patched values
    assert_error(run_cli_in_process("realign", "revert", back, "-o", tmp_path / "again", "--patch", out / "realign_patch.json"), 3, "does not hold the patched values")


def test_cli_dry_run_json_and_official_selection(tiny, tmp_path):
    out = tmp_path / "never"
    r = run_cli("realign", "nlsr", "-a", tiny["aligned"], "-f", tiny["ft_lora"], "-c", tiny["calib"], "-o", out, "--dry-run",
                "--select", "official", "--scorer", "wanda", "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["dry_run"] and not out.exists()
    assert all(0.3 - 1e-6 <= m["probability"] <= 0.7 + 1e-6 for m in payload["modules"])
    most_similar = max(payload["modules"], key=lambda m: m["similarity"])
    assert most_similar["probability"] == pytest.approx(0.7)
    assert payload["modules_patched"] == sum(m["patched"] for m in payload["modules"])


def test_cli_bad_input_exit_codes(tiny, tmp_path):
    out = tmp_path / "o"
    common = ("-a", tiny["aligned"], "-f", tiny["ft_lora"], "-o", out)
    assert_error(run_cli_in_process("realign", "nlsr", *common, "--scorer", "magnitude", "--mask-ratio", "1.5"), 2, "--mask-ratio")
    assert_error(run_cli_in_process("realign", "nlsr", *common, "-c", tiny["calib_unusable"]), 3, "no usable calibration rows")
    assert_error(run_cli_in_process("realign", "nlsr", "-a", tiny["aligned"], "-f", tiny["ft_rank2"], "-o", out, "--scorer", "magnitude", "--unit", "element"), 3,
                 "different ranks")
    assert_error(run_cli_in_process("realign", "nlsr", "-a", tiny["aligned"], "-f", tiny["ft_on_merged"], "-o", out, "--scorer", "magnitude", "--unit", "element"), 3, "different bases")
    assert_error(run_cli_in_process("realign", "nlsr", "-a", tiny["aligned_full"], "--base", tiny["base"], "-f", tiny["other_arch"], "-o", out, "--scorer", "magnitude"), 3, "shape mismatch")
    assert not out.exists()
    out.mkdir()
    assert_error(run_cli_in_process("realign", "nlsr", *common, "--scorer", "magnitude"), 2, "already exists")


@pytest.mark.parametrize(
    "kwargs, code, needle",
    [
        ({"mask_ratio": 0.0}, 2, "--mask-ratio"),
        ({"scorer": "actsvd"}, 2, "calibration"),
        ({"aligned": "aligned_full", "finetuned": "ft_full"}, 2, "--base"),
        ({"aligned": "aligned_full", "finetuned": "ft_full", "base": "base", "amplify_mode": "official"}, 2, "official"),
    ],
)
def test_library_usage_errors(tiny, tmp_path, kwargs, code, needle):
    from llmguard.errors import LLMGuardError

    args = {"aligned": "aligned", "finetuned": "ft_lora", "scorer": "magnitude"}
    args.update(kwargs)
    for role in ("aligned", "finetuned", "base"):
        if role in args:
            args[role] = tiny[args[role]]
    finetuned = args.pop("finetuned")
    with pytest.raises(LLMGuardError) as info:
        nlsr(finetuned, tmp_path / "o", **args)
    assert info.value.exit_code == code and needle in info.value.message
    assert not (tmp_path / "o").exists()


def test_defaults_are_weight_units_in_every_module(tiny, tmp_path):
    """``--unit auto`` is single ΔW weights, and their default budget is every module (the mask
    picks the weights); a LoRA fine-tune's default mask keeps 0.15 of each module's weights."""
    result = nlsr(tiny["ft_on_merged"], None, aligned=tiny["aligned"], scorer="magnitude", dry_run=True)
    assert result.unit == "weight" and result.output is None and result.patched == 14
    assert result.manifest["mask_ratio"] == 0.15
