"""``realign safelora`` against the paper's formula computed explicitly (C = V Vᵀ / ‖V‖_F formed as a
matrix), the threshold and top-k rules, LoRA in → LoRA out, and bad input."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from cli_utils import assert_error, no_partial_output, run_cli, run_cli_in_process
from llmguard.realign.safelora.method import run_safelora
from llmguard.realign.safelora.options import SafeLoraOptions


def _explicit(tiny):
    """Per module: (cosine, C @ B) with C formed explicitly, as the authors' code does."""
    from llmguard.io.lora import LoraAdapter

    adapter = LoraAdapter(tiny["ft_fresh"])
    aligned, base = load_file(str(tiny["aligned_full"] / "model.safetensors")), load_file(str(tiny["base"] / "model.safetensors"))
    out = {}
    for name, module in adapter.modules.items():
        target = f"{name}.weight" if f"{name}.weight" in base else f"model.{name}.weight"
        v = aligned[target].double() - base[target].double()
        c = v @ v.T / torch.norm(v)
        a, b = adapter.file.read(module.a_key).double(), adapter.file.read(module.b_key).double()
        cos = torch.nn.functional.cosine_similarity((c @ b @ a).reshape(1, -1), (b @ a).reshape(1, -1)).item()
        out[module.b_key] = (cos, c @ b)
    return out


def test_projection_and_cosines_match_the_explicit_formula(tiny, tmp_path) -> None:
    expected = _explicit(tiny)
    out = tmp_path / "proj"
    result = run_safelora(SafeLoraOptions(aligned=tiny["aligned_full"], base=tiny["base"], finetuned=tiny["ft_fresh"], output=out,
                                          top_k=3, device="cpu"))
    assert result.projected == 3 and len(result.modules) == len(expected)
    by_cos = sorted(expected.items(), key=lambda kv: kv[1][0])
    chosen = {k for k, _ in by_cos[:3]}
    written = load_file(str(out / "adapter_model.safetensors"))
    original = load_file(str(tiny["ft_fresh"] / "adapter_model.safetensors"))
    for row, (key, (cos, cb)) in zip(result.modules, expected.items()):
        assert abs(row["cosine"] - cos) < 1e-4
        if key in chosen:
            assert torch.allclose(written[key].double(), cb, atol=1e-5)
        else:
            assert torch.equal(written[key], original[key])
    for key in original:
        if ".lora_A." in key:
            assert torch.equal(written[key], original[key])
    assert json.loads((out / "safelora_modules.json").read_text())[0]["module"] == result.modules[0]["module"]
    # threshold rule: cos <= threshold
    everything = run_safelora(SafeLoraOptions(aligned=tiny["aligned_full"], base=tiny["base"], finetuned=tiny["ft_fresh"],
                                              threshold=1.0, dry_run=True, device="cpu"))
    assert everything.projected == len(expected) and everything.output is None
    none = run_safelora(SafeLoraOptions(aligned=tiny["aligned_full"], base=tiny["base"], finetuned=tiny["ft_fresh"],
                                        threshold=-1.0, dry_run=True, device="cpu"))
    assert none.projected == sum(1 for c, _ in expected.values() if c <= -1.0)


def test_cli_and_bad_input(tiny, tmp_path) -> None:
    out = tmp_path / "cli"
    ok = run_cli("realign", "safelora", "-a", tiny["aligned_full"], "--base", tiny["base"], "-f", tiny["ft_fresh"], "-o", out,
                 "--threshold", "0.9", "--json", "--device", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output"] == str(out) and (out / "adapter_config.json").is_file()
    bad = tmp_path / "bad"
    result = run_cli_in_process("realign", "safelora", "-a", tiny["aligned_full"], "--base", tiny["base"], "-f", tiny["ft_full"], "-o", bad)
    assert_error(result, 3, "not one")
    result = run_cli_in_process("realign", "safelora", "-a", tiny["aligned_full"], "--base", tiny["other_arch"], "-f", tiny["ft_fresh"], "-o", bad)
    assert_error(result, 3, "base")
    result = run_cli_in_process("realign", "safelora", "-a", tiny["aligned_full"], "--base", tiny["base"], "-f", tiny["ft_fresh"], "-o", bad,
                     "--threshold", "2")
    assert_error(result, 2, "--threshold")
    result = run_cli_in_process("realign", "safelora", "-a", tiny["aligned_full"], "--base", tiny["base"], "-f", tiny["ft_fresh"], "-o", bad,
                     "--top-k", "0")
    assert_error(result, 2, "--top-k")
    assert no_partial_output(bad)
