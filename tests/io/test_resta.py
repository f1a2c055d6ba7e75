"""``realign resta`` end to end: streamed output loads in transformers and equals in-memory math."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import assert_one_line_error, no_partial_output, run_cli, run_cli_in_process  # noqa: E402


def _state(path: Path, adapter: Path | None = None) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.float() for k, v in model.state_dict().items()}


def _logits(model_dir: Path, adapter: Path | None = None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = torch.arange(1, 17).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def _load_state_into(template: Path, state: dict[str, torch.Tensor]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(template)
    model.load_state_dict(state)
    ids = torch.arange(1, 17).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_checkpoints_match_in_memory_arithmetic(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "resta"
    result = run_cli("realign", "resta", "-f", models["finetuned"], "-a", models["aligned"], "-u", models["base"], "--gamma", "0.7", "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["verb"] == "realign resta" and manifest["parameters"]["gamma"] == 0.7
    assert {s["name"] for s in manifest["stages"]} == {"open inputs", "stream tensors"}
    assert set(manifest["inputs"]) == {"finetuned", "aligned", "unaligned"}
    assert json.loads((out / "llmguard.json").read_text())["verb"] == "realign resta"
    for aux in ("config.json", "generation_config.json"):
        assert (out / aux).is_file()
    f, a, u = (_state(models[k]) for k in ("finetuned", "aligned", "base"))
    expected = {k: f[k] + 0.7 * (a[k] - u[k]) for k in f}
    got = _state(out)
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    assert torch.allclose(_logits(out), _load_state_into(models["base"], expected), atol=1e-5)


def test_adapters_to_full_checkpoint_and_to_exact_adapter(models: dict[str, Path], tmp_path: Path) -> None:
    full_out, adapter_out = tmp_path / "full", tmp_path / "adapter"
    common = ("-f", models["lora_finetuned"], "-a", models["lora_aligned"], "-u", models["base"], "--gamma", "0.5")
    assert run_cli("realign", "resta", *common, "-o", full_out).returncode == 0
    result = run_cli_in_process("realign", "resta", *common, "-o", adapter_out, "--as-adapter")
    assert result.returncode == 0, result.stderr
    f = _state(models["base"], models["lora_finetuned"])
    a = _state(models["base"], models["lora_aligned"])
    u = _state(models["base"])
    expected = {k: f[k] + 0.5 * (a[k] - u[k]) for k in f}
    got = _state(full_out)
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    assert torch.allclose(_logits(full_out), _logits(models["base"], adapter_out), atol=1e-5)
    config = json.loads((adapter_out / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["lora_alpha"] == 12 and not config["use_rslora"]


def test_sharded_output_with_index_loads(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    result = run_cli_in_process("realign", "resta", "-f", models["finetuned"], "-a", models["aligned"], "-u", models["base"], "-o", out, "--max-shard-size", "20KB", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all((out / s).stat().st_size <= 20_000 + 12_288 + 2_000 for s in shards)  # one tensor may exceed the cap alone
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    f, a, u = (_state(models[k]) for k in ("finetuned", "aligned", "base"))
    got = _state(out)
    for k in got:
        expected = (f[k] + 0.5 * (a[k] - u[k])).to(torch.bfloat16).float()
        assert torch.equal(got[k], expected), k  # rounded once, from float32


def test_existing_output_needs_force_and_inputs_are_protected(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ("realign", "resta", "-f", models["finetuned"], "-a", models["aligned"], "-u", models["base"])
    assert_one_line_error(run_cli_in_process(*args, "-o", out), 2, "already exists", "--force")
    assert (out / "keep.txt").exists()
    assert run_cli_in_process(*args, "-o", out, "--force").returncode == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert_one_line_error(run_cli_in_process(*args, "-o", models["finetuned"] / "sub"), 2, "refusing to write into the input")
    assert_one_line_error(run_cli_in_process(*args, "-o", models["aligned"], "--force"), 2, "refusing to write into the input")


def test_shape_mismatch_is_invalid_input(models: dict[str, Path], tmp_path: Path) -> None:
    from helpers import make_llama

    other = make_llama(tmp_path / "wide", seed=5, hidden_size=48, num_attention_heads=4)
    out = tmp_path / "out"
    result = run_cli_in_process("realign", "resta", "-f", models["finetuned"], "-a", other, "-u", models["base"], "-o", out)
    assert_one_line_error(result, 3, "shape mismatch for tensor")
    assert no_partial_output(out)


def test_adapter_without_local_base_is_a_usage_error(models: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "adapter"
    moved.mkdir()
    for f in models["lora_aligned"].iterdir():
        data = f.read_bytes()
        if f.name == "adapter_config.json":
            cfg = json.loads(data)
            cfg["base_model_name_or_path"] = "meta-llama/NotHere"
            data = json.dumps(cfg).encode()
        (moved / f.name).write_bytes(data)
    result = run_cli_in_process("realign", "resta", "-f", moved, "-a", models["aligned"], "-u", models["base"], "-o", tmp_path / "o")
    assert_one_line_error(result, 2, "--base")
    result = run_cli_in_process("realign", "resta", "-f", moved, "-a", models["aligned"], "-u", models["base"], "--base", models["base"], "-o", tmp_path / "o")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_missing_device_is_a_resource_error(models: dict[str, Path], tmp_path: Path, device: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli_in_process("realign", "resta", "-f", models["finetuned"], "-a", models["aligned"], "-u", models["base"], "-o", tmp_path / "o", "--device", device)
    assert_one_line_error(result, 4, "no CUDA device")
