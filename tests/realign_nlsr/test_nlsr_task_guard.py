"""``realign nlsr --task-data``: the task guard on tiny real models.

The task pairs are the fine-tuned model's own greedy answers, so the fine-tune scores 100 % on
them by construction; a transplant that changes those answers costs task accuracy, and the
guard must give it back by reverting whole modules, exactly (reverted modules hold the
fine-tune's weights bit for bit) and as measured (the written model scores what the guard says).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cli_utils import assert_error, run_cli
from conftest import WORDS
from helpers import make_llama, make_lora, make_word_tokenizer, merged
from llmguard.realign.nlsr import nlsr
from llmguard.realign.nlsr.calibration_data import encode_pairs
from llmguard.realign.nlsr.task_guard import teacher_forced

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
    result = nlsr(tiny["ft_full"], out, **common, task_data=task_pairs, task_response_field="answer", task_tolerance=0.0)
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
    assert run_cli("realign", "revert", out, "-o", back).returncode == 0
    assert all(torch.equal(_weights(back)[k], ft[k]) for k in ft)


def test_guard_keeps_every_module_within_tolerance(models, task_pairs, tmp_path):
    tiny = models
    result = nlsr(tiny["ft_full"], tmp_path / "out", aligned=tiny["aligned_full"], base=tiny["base"], calibration=tiny["calib"],
                  scorer="wanda", mask_ratio=0.4, alpha=3.0, task_data=task_pairs, task_response_field="answer", task_tolerance=100.0)
    guard = result.manifest["task_guard"]
    assert guard["reverted"] == [] and "leave_one_out" not in guard and guard["within_tolerance"]


def test_task_data_bad_input(tiny, task_pairs, tmp_path):
    out = tmp_path / "o"
    common = ("-a", tiny["aligned"], "-f", tiny["ft_lora"], "-o", out, "--scorer", "magnitude")
    assert_error(run_cli("realign", "nlsr", *common, "--unit", "element", "--task-data", task_pairs), 2, "--unit element")
    assert_error(run_cli("realign", "nlsr", *common, "--task-data", task_pairs), 3, "--task-data", "--task-response-field")  # no 'response' field
    assert_error(run_cli("realign", "nlsr", *common, "--task-data", task_pairs, "--task-response-field", "answer",
                         "--task-tolerance", "-1"), 2, "--task-tolerance")
    assert not out.exists()
