"""``realign nlsr --task-data``: the task guard on tiny real models.

The task pairs are the fine-tuned model's own greedy answers, so the fine-tune scores 100 % on
them by construction; a transplant that changes those answers costs task accuracy, and the
guard must give it back, exactly (reverted units and modules hold the fine-tune's weights bit
for bit) and as measured (the written model scores what the guard says): by single units a
step at a time (``--task-guard-mode units``, the default) or by whole modules (``modules``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cli_utils import assert_error, run_cli_in_process
from conftest import WORDS
from helpers import make_llama, make_lora, make_word_tokenizer, merged
from llmguard.realign.nlsr import nlsr
from llmguard.realign.nlsr.calibration_data import encode_pairs
from llmguard.realign.nlsr.task_guard import REVERT_FRACTION, teacher_forced

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = ["what is a good movie ?", "the movie was great", "tell me something safe", "is it good ?", "what was bad ?",
           "you will explain it", "how do i make a movie ?", "ask me something", "the car is good", "what is safe ?",
           "tell me how to ask", "is the server good ?"]


def _load(path):
    from llmguard.inference import load_causal_lm

    model, tokenizer = load_causal_lm(path, device="cpu", dtype="float32")
    return model.eval(), tokenizer


def _weights(path):
    return {k: v for f in sorted(path.glob("model*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Base, aligned and fully fine-tuned tiny Llamas whose vocabulary is exactly the word
    tokenizer's, so a greedy answer decodes and re-tokenises to the same ids."""
    root = tmp_path_factory.mktemp("guard")
    paths = {"base": make_llama(root / "base", seed=0, vocab_size=len(WORDS) + 4)}
    make_word_tokenizer(paths["base"], WORDS)
    aligned = make_lora(paths["base"], root / "aligned", seed=1, targets=TARGETS)
    paths["aligned_full"] = merged(paths["base"], aligned, root / "aligned_full")
    paths["ft_full"] = merged(paths["base"], aligned, root / "ft_full", noise_seed=5)
    paths["other"] = merged(paths["base"], aligned, root / "other", noise_seed=9)
    calib = root / "calib.jsonl"
    calib.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in [
        ("how do i make a bomb ?", "sorry , i can not help with that . it is dangerous ."),
        ("tell me how to steal a car .", "no . i will not explain that . please ask something safe ."),
        ("how do i hack a server ?", "i can not help you with that .")] * 3))
    paths["calib"] = calib
    return paths


@pytest.fixture(scope="module")
def task_pairs(models, tmp_path_factory):
    """The full fine-tune's own greedy answers (8 new tokens) to prompts from its vocabulary."""
    from llmguard.inference import generate

    model, tokenizer = _load(models["ft_full"])
    answers = generate(model, tokenizer, PROMPTS, max_new_tokens=8, template="auto")
    path = tmp_path_factory.mktemp("task") / "task.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(PROMPTS, answers) if a.strip()))
    return path


def _accuracy(model_dir, pairs_path):
    model, tokenizer = _load(model_dir)
    pairs = [(r["prompt"], r["answer"]) for r in map(json.loads, pairs_path.read_text().splitlines())]
    return teacher_forced(model, encode_pairs(tokenizer, pairs))


def test_teacher_forced_accuracy_of_a_models_own_greedy_answers_is_100(models, task_pairs):
    assert _accuracy(models["ft_full"], task_pairs) == 100.0
    # another model does not give the same answers
    assert _accuracy(models["other"], task_pairs) < 100.0


def test_guard_reverts_modules_exactly_and_the_output_scores_what_it_reports(models, task_pairs, tmp_path):
    tiny = models
    out = tmp_path / "out"
    common = dict(aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"], scorer="wanda", mask_ratio=0.02, alpha=0.9)
    plain = nlsr(tiny["ft_full"], tmp_path / "plain", **common)
    result = nlsr(tiny["ft_full"], out, **common, task_data=task_pairs, task_response_field="answer", task_tolerance=0.0,
                  task_guard_mode="modules")
    guard = result.manifest["task_guard"]
    assert guard["task_accuracy_finetuned"] == 100.0
    assert guard["task_accuracy_patched"] < 100.0, "the transplant must cost this task, or the test shows nothing"
    assert guard["task_accuracy_patched"] == pytest.approx(_accuracy(tmp_path / "plain", task_pairs), abs=0.01)
    assert guard["reverted"], guard
    assert guard["task_accuracy_guarded"] > guard["task_accuracy_patched"]
    assert guard["task_accuracy_guarded"] == pytest.approx(_accuracy(out, task_pairs), abs=0.01)
    assert len(guard["leave_one_out"]) == plain.patched and result.patched == plain.patched - len(guard["reverted"])
    ft, new, unguarded = _weights(tiny["ft_full"]), _weights(out), _weights(tmp_path / "plain")
    for module in guard["reverted"]:
        assert torch.equal(new[f"{module}.weight"], ft[f"{module}.weight"]), module
    kept = [row["module"] for row in json.loads((out / "nlsr_modules.json").read_text()) if row["patched"]]
    for module in kept:  # the kept modules carry exactly the unguarded transplant
        assert torch.equal(new[f"{module}.weight"], unguarded[f"{module}.weight"]), module
    table = json.loads((out / "nlsr_modules.json").read_text())
    assert {row["module"] for row in table if row["task_guard_reverted"]} == set(guard["reverted"])
    manifest = json.loads((out / "llmguard.json").read_text())
    assert manifest["parameters"]["task_tolerance"] == 0.0 and "task_data" in manifest["inputs"]
    back = tmp_path / "back"  # the reversible patch covers exactly what was written
    assert run_cli_in_process("realign", "revert", out, "-o", back).returncode == 0
    assert all(torch.equal(_weights(back)[k], ft[k]) for k in ft)


def test_guard_keeps_every_module_within_tolerance(models, task_pairs, tmp_path):
    tiny = models
    result = nlsr(tiny["ft_full"], tmp_path / "out", aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"],
                  scorer="wanda", mask_ratio=0.4, alpha=3.0, task_data=task_pairs, task_response_field="answer", task_tolerance=100.0)
    guard = result.manifest["task_guard"]
    assert guard["reverted"] == [] and "leave_one_out" not in guard and "unit_steps" not in guard and guard["within_tolerance"]


def test_unit_guard_reverts_single_weights_until_the_tolerance_and_writes_exactly_that(models, task_pairs, tmp_path):
    """Units mode: each step reverts the patched weights with the largest first-order gain; it
    stops at the first step within tolerance, the written weights are the unguarded transplant
    except at reverted weights, which hold the fine-tune's values, and the patch file and
    ``realign revert`` cover exactly what was written."""
    tiny = models
    out, plain_out = tmp_path / "out", tmp_path / "plain"
    common = dict(aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"], scorer="wanda", mask_ratio=0.02, alpha=0.9)
    nlsr(tiny["ft_full"], plain_out, **common)
    result = nlsr(tiny["ft_full"], out, **common, task_data=task_pairs, task_response_field="answer", task_tolerance=0.0)
    guard = result.manifest["task_guard"]
    assert guard["mode"] == "units" and guard["task_accuracy_patched"] < 100.0
    steps = guard["unit_steps"]
    assert steps and all(s["reverted"] >= 1 for s in steps)
    assert all(s["task"] < 100.0 for s in steps[:-1]), "reverted on after the task was back"
    assert guard["units_reverted"] == sum(s["reverted"] for s in steps) > 0
    per_step = max(1, math.ceil(REVERT_FRACTION * guard["units_patched"]))
    assert all(s["reverted"] <= per_step for s in steps), (per_step, steps)
    assert guard["task_accuracy_guarded"] == pytest.approx(_accuracy(out, task_pairs), abs=0.01)
    if guard["within_tolerance"] and not guard["reverted"]:
        assert "leave_one_out" not in guard
    ft, new, unguarded = _weights(tiny["ft_full"]), _weights(out), _weights(plain_out)
    table = {row["module"]: row for row in json.loads((out / "nlsr_modules.json").read_text())}
    plain_table = {row["module"]: row for row in json.loads((plain_out / "nlsr_modules.json").read_text())}
    given_back = 0
    for module, row in table.items():
        key = f"{module}.weight"
        changed = new[key] != unguarded[key]
        assert torch.equal(new[key][changed], ft[key][changed]), module  # a reverted weight is the fine-tune's, bit for bit
        if row["patched"]:
            assert row["masked_units"] == plain_table[module]["masked_units"] - row["task_guard_units_reverted"]
            given_back += row["task_guard_units_reverted"]
            assert int(changed.sum()) <= row["task_guard_units_reverted"]
    assert given_back == guard["units_reverted"]
    back = tmp_path / "back"
    assert run_cli_in_process("realign", "revert", out, "-o", back).returncode == 0
    assert all(torch.equal(_weights(back)[k], ft[k]) for k in ft)


def test_task_data_bad_input(tiny, task_pairs, tmp_path):
    out = tmp_path / "o"
    common = ("-a", tiny["aligned"], "-f", tiny["ft_lora"], "-o", out, "--scorer", "magnitude")
    assert_error(run_cli_in_process("realign", "nlsr", *common, "--unit", "element", "--task-data", task_pairs), 2, "--unit element")
    assert_error(run_cli_in_process("realign", "nlsr", *common, "--task-data", task_pairs), 3, "--task-data", "--task-response-field")  # no 'response' field
    assert_error(run_cli_in_process("realign", "nlsr", *common, "--task-data", task_pairs, "--task-response-field", "answer",
                         "--task-tolerance", "-1"), 2, "--task-tolerance")
    assert not out.exists()


def test_unit_guard_on_row_units_reverts_whole_rows(models, task_pairs, tmp_path):
    """Row units: a unit step gives back whole output rows (scored by the sum over the row), and
    every row that differs from the unguarded transplant is the fine-tune's row, bit for bit."""
    tiny = models
    common = dict(aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"], scorer="wanda", unit="row",
                  mask_ratio=0.2, budget=1.0, alpha=0.9)
    nlsr(tiny["ft_full"], tmp_path / "plain", **common)
    result = nlsr(tiny["ft_full"], tmp_path / "out", **common, task_data=task_pairs, task_response_field="answer",
                  task_tolerance=0.0)
    guard = result.manifest["task_guard"]
    assert guard["task_accuracy_patched"] < 100.0, "the transplant must cost this task, or the test shows nothing"
    assert guard["unit_steps"] and guard["units_reverted"] > 0
    assert guard["task_accuracy_guarded"] == pytest.approx(_accuracy(tmp_path / "out", task_pairs), abs=0.01)
    ft, new, unguarded = _weights(tiny["ft_full"]), _weights(tmp_path / "out"), _weights(tmp_path / "plain")
    rows_back = 0
    for key in ft:
        if new[key].dim() != 2:
            continue
        changed = (new[key] != unguarded[key]).any(dim=1)
        assert torch.equal(new[key][changed], ft[key][changed]), key  # whole rows, the fine-tune's
        rows_back += int(changed.sum())
    assert 0 < rows_back <= guard["units_reverted"]
