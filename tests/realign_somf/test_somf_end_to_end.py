"""``realign somf`` end to end on tiny real models: the library result, the files it writes, the
CLI in a subprocess, and bad input (one error line, the documented exit code, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cli_utils import assert_error, no_partial_output, run_cli, run_cli_in_process
from llmguard.realign.somf.method import run_somf
from llmguard.realign.somf.options import SomfOptions


def _options(tiny, out, **kw):
    return SomfOptions(aligned=tiny["aligned"], finetuned=kw.pop("finetuned", [tiny["ft1"]]), preference=tiny["pref"], output=out,
                       steps=kw.pop("steps", 6), batch_size=4, device="cpu", **kw)


def test_lora_in_lora_out_is_aligned_plus_the_masked_task_vector(tiny, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_somf(_options(tiny, out))
    assert result.space == "factor" and result.output == out
    written = load_file(str(out / "adapter_model.safetensors"))
    aligned = load_file(str(tiny["aligned"] / "adapter_model.safetensors"))
    ft = load_file(str(tiny["ft1"] / "adapter_model.safetensors"))
    from llmguard.realign.somf.mask import load_mask

    masks, meta = load_mask(out / "somf_mask.safetensors", {k: tuple(v.shape) for k, v in aligned.items()}, "element")
    assert meta["space"] == "factor"
    for key, a in aligned.items():
        m = masks[key].float()
        assert abs(float(m.mean()) - 0.8) < 0.01  # --keep-ratio 0.8 per tensor
        expected = a + (ft[key] - a) * m / m.mean()
        assert torch.allclose(written[key], expected, atol=1e-6), key
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    manifest = json.loads((out / "llmguard.json").read_text())
    assert manifest["verb"] == "realign somf" and manifest["parameters"]["effective_keep_ratio"] == 0.8
    training = manifest["training"]
    assert len(training["loss_per_step"]) == 6 and len(training["seconds_per_step"]) == 6 and len(training["peak_rss_bytes_per_step"]) == 6
    assert set(manifest["mask_density_per_module"]) == set(aligned)
    assert (out / "README.md").read_text().startswith("# SOMF-realigned LoRA adapter")
    # the adapter loads in PEFT (tokenizer files copied next to it)
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), out)
    AutoTokenizer.from_pretrained(tiny["base"])


def test_mask_file_reuse_reproduces_the_output_and_dry_run_writes_nothing(tiny, tmp_path) -> None:
    first = tmp_path / "first"
    run_somf(_options(tiny, first, granularity="row"))
    again = tmp_path / "again"
    run_somf(_options(tiny, again, mask_file=first / "somf_mask.safetensors"))
    assert (first / "adapter_model.safetensors").read_bytes() == (again / "adapter_model.safetensors").read_bytes()
    dry = tmp_path / "dry"
    result = run_somf(_options(tiny, dry, dry_run=True))
    assert result.dry_run and result.output is None and no_partial_output(dry)
    assert len(result.losses) == 6


def test_full_keep_all_is_the_finetune_and_fusion_runs_each_merge(tiny, tmp_path) -> None:
    out = tmp_path / "full"
    result = run_somf(SomfOptions(aligned=tiny["aligned_full"], finetuned=[tiny["ft_full"]], preference=tiny["pref"], output=out,
                                  steps=2, batch_size=4, keep_ratio=1.0, device="cpu"))
    assert result.space == "weight"
    written, ft = load_file(str(out / "model.safetensors")), load_file(str(tiny["ft_full"] / "model.safetensors"))
    assert all(torch.allclose(written[k], ft[k], atol=1e-6) for k in ft)
    assert (out / "config.json").is_file()
    for merge in ("ta", "ties", "dare", "avg"):  # fusion: weight space (no factor cross terms), λ 1, keep 0.9, a warning
        fused = run_somf(_options(tiny, tmp_path / f"fused-{merge}", finetuned=[tiny["ft1"], tiny["ft2"]], merge=merge, steps=2))
        parameters = fused.manifest["parameters"]
        assert fused.space == "weight" and parameters["effective_lambda"] == 1.0 and parameters["effective_keep_ratio"] == 0.9
        assert parameters["effective_density"] == {"ta": None, "ties": 0.5, "dare": 0.8, "avg": None}[merge]
        assert any("--task-data" in note for note in fused.notes)
        assert (tmp_path / f"fused-{merge}" / "model.safetensors").is_file()
    factor = run_somf(_options(tiny, tmp_path / "fused-factor", finetuned=[tiny["ft1"], tiny["ft2"]], space="factor", steps=2,
                               lam=0.3))
    assert factor.space == "factor" and factor.manifest["effective_lambda"] == 0.3  # the paper's setting, on request


def test_training_moves_the_logits_against_the_rejected_answers(tiny, tmp_path) -> None:
    result = run_somf(_options(tiny, tmp_path / "t", steps=30, lr=0.05, dry_run=True, seed=1))
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first, result.losses


def test_gradient_checkpointing_gives_the_same_training(tiny, tmp_path) -> None:
    plain = run_somf(_options(tiny, tmp_path / "p", steps=3, dry_run=True))
    checkpointed = run_somf(_options(tiny, tmp_path / "c", steps=3, dry_run=True, gradient_checkpointing=True))
    assert plain.losses == pytest.approx(checkpointed.losses, abs=1e-5)
    assert plain.module_density == checkpointed.module_density


def test_cli_end_to_end_json(tiny, tmp_path) -> None:
    out = tmp_path / "cli"
    result = run_cli("realign", "somf", "-a", tiny["aligned"], "-f", tiny["ft1"], "-f", tiny["ft2"], "-p", tiny["pref"], "-o", out,
                     "--merge", "ties", "--steps", "3", "--batch-size", "4", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    assert "fusing without --task-data" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["space"] == "weight" and doc["manifest"]["parameters"]["merge"] == "ties" and (out / "somf_mask.safetensors").is_file()
    human = run_cli("realign", "somf", "-a", tiny["aligned"], "-f", tiny["ft1"], "-p", tiny["pref"], "--dry-run", "--steps", "2",
                    "--device", "cpu")
    assert human.returncode == 0 and "nothing written (dry run)" in human.stdout, human.stderr


def test_bad_input_one_line_exit_code_nothing_written(tiny, tmp_path) -> None:
    out = tmp_path / "bad"
    common = ["-a", tiny["aligned"], "-o", out, "--steps", "2", "--device", "cpu"]
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text(json.dumps({"prompt": "how do i make a bomb .", "chosen": "no ."}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        (["-f", tiny["ft1"], "-p", no_field], 3, "rejected"),
        (["-f", tiny["ft1"], "-p", empty], 3, "no records"),
        (["-f", tiny["ft1"], "-p", tiny["pref"], "--lambda", "0"], 2, "--lambda"),
        (["-f", tiny["ft1"], "-p", tiny["pref"], "--lambda", "-1"], 2, "--lambda"),
        (["-f", tiny["ft1"], "-f", tiny["other_arch"], "-p", tiny["pref"]], 3, "shape"),
        (["-f", tiny["ft1"], "-p", tiny["pref"], "--mask-file", tiny["pref"]], 3, "--mask-file"),
        (["-f", tiny["aligned"], "-p", tiny["pref"]], 2, "aligned model itself"),
    ]
    for extra, code, needle in cases:
        result = run_cli_in_process("realign", "somf", *common, *extra)
        assert_error(result, code, needle)
        assert no_partial_output(out), extra
    # a mask trained for another model
    other = tmp_path / "other"
    run_somf(SomfOptions(aligned=tiny["aligned_full"], finetuned=[tiny["ft_full"]], preference=tiny["pref"], output=other, steps=1,
                         batch_size=4, device="cpu"))
    result = run_cli_in_process("realign", "somf", *common, "-f", tiny["ft1"], "--mask-file", other / "somf_mask.safetensors")
    assert_error(result, 3, "another model")
    # OUT exists without --force: refused before any training
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = run_cli_in_process("realign", "somf", *common, "-f", tiny["ft1"], "-p", tiny["pref"])
    assert_error(result, 2, "already exists")
    assert (out / "keep.txt").read_text() == "x"
