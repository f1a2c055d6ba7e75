"""``inspect`` and ``diff`` as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from llmguard.io.compare import compare
from llmguard.io.lora import LoraAdapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import assert_one_line_error, run_cli, run_cli_in_process  # noqa: E402


def test_inspect_checkpoint_and_adapter(models: dict[str, Path]) -> None:
    ckpt = json.loads(run_cli("inspect", models["base"], "--json").stdout)
    assert ckpt["architecture"] == "LlamaForCausalLM"
    assert ckpt["parameters"] == sum(v.numel() for v in __import__("safetensors.torch").torch.load_file(models["base"] / "model.safetensors").values())
    assert ckpt["largest_tensor"]["name"] in ("lm_head.weight", "model.embed_tokens.weight")
    assert ckpt["tied_embeddings"] is False and ckpt["lm_head_stored"] is True
    adapter = json.loads(run_cli("inspect", models["lora_finetuned"], "--json").stdout)
    assert adapter["kind"] == "lora_adapter"
    assert (adapter["rank"], adapter["alpha"], adapter["rslora"]) == (8, 16.0, True)
    assert adapter["adapted_module_types"] == ["down_proj", "q_proj", "v_proj"]
    assert adapter["base_model"] == str(models["base"])
    human = run_cli("inspect", models["lora_finetuned"])
    assert human.returncode == 0 and "rsLoRA" in human.stdout


def test_inspect_missing_path(tmp_path: Path) -> None:
    assert_one_line_error(run_cli_in_process("inspect", tmp_path / "nope"), 3, "no such file")


def _dense_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(), y.double().flatten()
    return float(x @ y / (x.norm() * y.norm()))


def test_adapter_diff_equals_dense_delta_math(models: dict[str, Path]) -> None:
    report = compare(models["lora_aligned"], models["lora_finetuned"])
    assert report["mode"] == "adapter-delta"
    a, b = LoraAdapter(models["lora_aligned"]), LoraAdapter(models["lora_finetuned"])
    rows = {r["module"]: r for r in report["modules"]}
    for name, module in a.modules.items():
        da, db = a.delta(module), b.delta(b.modules[name])
        assert rows[name]["cosine"] == pytest.approx(_dense_cos(da, db), abs=1e-6)
        assert rows[name]["relative_change"] == pytest.approx(float((db - da).norm() / da.norm()), rel=1e-5)


def test_checkpoint_diff_with_base_compares_deltas(models: dict[str, Path]) -> None:
    report = compare(models["finetuned"], models["aligned"], base=models["base"])
    assert report["mode"] == "delta"
    from safetensors.torch import load_file

    f, a, u = (load_file(models[k] / "model.safetensors") for k in ("finetuned", "aligned", "base"))
    row = next(r for r in report["modules"] if r["module"] == "model.layers.0.mlp.up_proj")
    name = "model.layers.0.mlp.up_proj.weight"
    assert row["cosine"] == pytest.approx(_dense_cos(f[name] - u[name], a[name] - u[name]), abs=1e-6)


def test_diff_cli_chart_and_json(models: dict[str, Path]) -> None:
    human = run_cli("diff", models["lora_aligned"], models["lora_finetuned"], "--top", "3")
    assert human.returncode == 0, human.stderr
    assert "least similar modules" in human.stdout and "█" in human.stdout
    body = [line for line in human.stdout.splitlines() if "█" in line]
    assert len(body) == 3
    mixed = json.loads(run_cli("diff", models["lora_aligned"], models["finetuned"], "--json").stdout)
    assert mixed["mode"] == "delta" and len(mixed["modules"]) == 6
