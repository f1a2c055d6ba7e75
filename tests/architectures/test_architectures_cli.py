"""A few real CLI runs on the matrix: what a user sees (exit codes, one error line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import assert_one_line_error, no_partial_output, run_cli  # noqa: E402

from zoo import make_adapter  # noqa: E402


def test_nlsr_cli_on_gpt2_conv1d_and_inspect_structure(matrix, adapters, tmp_path):
    paths = matrix["gpt2"]
    out = tmp_path / "out"
    r = run_cli("realign", "nlsr", "-f", paths["finetuned"], "-a", paths["aligned"], "--base", paths["base"], "-o", out,
                "--scorer", "magnitude", "--budget", "0.5")
    assert r.returncode == 0, r.stderr
    table = json.loads((out / "nlsr_modules.json").read_text())
    assert len(table) == 8 and sum(row["patched"] for row in table) == 4
    inspected = json.loads(run_cli("inspect", adapters["mixtral-experts"][1], "--json").stdout)
    assert inspected["structure"]["expert_linear_maps"] == 24
    assert inspected["structure"]["fused_in_memory"] == ["down_proj", "gate_up_proj"]
    gpt2 = json.loads(run_cli("inspect", paths["base"], "--json").stdout)["structure"]
    assert gpt2["transposed_linear_maps"] == 8 and gpt2["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    human = run_cli("inspect", paths["base"])
    assert human.returncode == 0 and "8 transposed (Conv1D)" in human.stdout


def test_nothing_to_realign_exits_3_with_one_line(matrix, tmp_path):
    base = matrix["llama-tied"]["base"]
    only_embedding = make_adapter(base, tmp_path / "emb", seed=5, r=4, lora_alpha=8, target_modules=["embed_tokens"])
    out = tmp_path / "out"
    r = run_cli("realign", "nlsr", "-f", only_embedding, "-a", only_embedding, "--base", base, "-o", out, "--scorer", "magnitude")
    assert_one_line_error(r, 3, "no adapted linear module")
    assert no_partial_output(out)
