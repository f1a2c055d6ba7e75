"""``realign somf --task-data``: the task-retention term of the mask loss, on tiny real models.

The term is the mean per-token NLL of the fine-tune's own task responses under the masked model,
added to the DPO loss with ``--task-weight``; these tests check that it is computed on the same
sampled mask as the DPO term, that training lowers it, that it keeps more of the task than the DPO
loss alone, and that bad task input is one error line with nothing written.
"""

from __future__ import annotations

import json

import torch

from cli_utils import assert_error, no_partial_output, run_cli, run_cli_in_process
from llmguard.realign.somf.method import run_somf
from llmguard.realign.somf.options import SomfOptions

TASK = [("the movie was great .", "sure . here it is ."), ("how do i make a movie .", "first take the movie ."),
        ("is it safe .", "it is safe . please ask something .")]


def _task_file(tmp_path):
    path = tmp_path / "task.jsonl"
    with open(path, "w") as f:
        for i, (prompt, answer) in enumerate(TASK * 4):
            f.write(json.dumps({"id": i, "prompt": prompt, "answer": answer}) + "\n")
    return path


def _options(tiny, out, **kw):
    settings = {"aligned": tiny["aligned"], "finetuned": [tiny["ft1"]], "preference": tiny["pref"], "batch_size": 4, "device": "cpu",
                **kw}
    return SomfOptions(output=out, **settings)


def _task_nll(tiny, adapter, task_file) -> float:
    """Mean per-token NLL of the task responses under base + ``adapter`` (the written output)."""
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llmguard.realign.somf.dpo import mean_token_nll
    from llmguard.realign.somf.preference import encode_task, load_task

    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = load_task(task_file, prompt_field="prompt", response_field="answer", limit=512, seed=0)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), adapter).eval()
    with torch.no_grad():
        return float(mean_token_nll(model, encode_task(tokenizer, rows, template="auto", max_length=256), tokenizer.pad_token_id,
                                    torch.device("cpu")))


def test_task_term_is_trained_on_the_same_mask_and_recorded(tiny, tmp_path) -> None:
    task = _task_file(tmp_path)
    plain = run_somf(_options(tiny, tmp_path / "plain", steps=30, lr=0.05, seed=1, dry_run=True))
    kept = run_somf(_options(tiny, tmp_path / "kept", steps=30, lr=0.05, seed=1, task_data=[task], task_response_field="answer",
                             task_weight=2.0))
    assert plain.task_losses == [] and len(kept.task_losses) == 30
    # step 1 samples the same mask from the same logits: the DPO term is the same, the task term is extra
    assert kept.losses[0] == plain.losses[0]
    assert sum(kept.task_losses[-5:]) / 5 < sum(kept.task_losses[:5]) / 5, kept.task_losses
    manifest = json.loads((tmp_path / "kept" / "llmguard.json").read_text())
    assert manifest["parameters"]["task_weight"] == 2.0 and manifest["parameters"]["task_data"] == [str(task)]
    assert manifest["training"]["task_loss_per_step"] == kept.task_losses
    assert "task_data" in manifest["inputs"]
    assert next(s for s in manifest["stages"] if s["name"] == "preference data")["task_pairs"] == len(TASK) * 4


def test_task_term_keeps_more_of_the_task_than_dpo_alone(tiny, tmp_path) -> None:
    task = _task_file(tmp_path)
    run_somf(_options(tiny, tmp_path / "plain", steps=40, lr=0.05, seed=2))
    run_somf(_options(tiny, tmp_path / "kept", steps=40, lr=0.05, seed=2, task_data=[task], task_response_field="answer",
                      task_weight=5.0))
    plain, kept = _task_nll(tiny, tmp_path / "plain", task), _task_nll(tiny, tmp_path / "kept", task)
    assert kept < plain, (kept, plain)


def test_bad_task_input_one_line_nothing_written(tiny, tmp_path) -> None:
    out = tmp_path / "bad"
    task = _task_file(tmp_path)
    common = ["-a", tiny["aligned"], "-f", tiny["ft1"], "-p", tiny["pref"], "-o", out, "--steps", "2", "--device", "cpu"]
    cases = [
        (["--task-data", task], 3, "--task-data"),  # the default response field is "response"; the file has "answer"
        (["--task-data", tmp_path / "missing.jsonl", "--task-response-field", "answer"], 3, "--task-data"),
        (["--task-data", task, "--task-response-field", "answer", "--task-weight", "0"], 2, "--task-weight"),
        (["--task-data", task, "--mask-file", tiny["pref"]], 2, "--mask-file"),
    ]
    for extra, code, needle in cases:
        result = run_cli_in_process("realign", "somf", *common, *extra)
        assert_error(result, code, needle)
        assert no_partial_output(out), extra


def test_fusion_learns_merge_scales_stores_them_and_reuses_them(tiny, tmp_path) -> None:
    """Fusing with --task-data learns one scale per (tensor, fine-tune) beside the mask; the output is
    A + Merge({s_i τ_i ⊙ m / mean(m)}) with those scales, they are in the manifest and the mask file,
    and --mask-file reproduces the output bit for bit."""
    from safetensors.torch import load_file

    from llmguard.realign.somf.mask import load_mask
    from llmguard.realign.somf.task_vectors import open_task_vectors

    task = _task_file(tmp_path)
    fused = tmp_path / "fused"
    result = run_somf(_options(tiny, fused, finetuned=[tiny["ft1"], tiny["ft2"]], steps=20, lr=0.05, seed=4,
                               task_data=[task, task], task_response_field="answer"))
    manifest = json.loads((fused / "llmguard.json").read_text())
    assert manifest["parameters"]["effective_task_scales"] == "tensor"
    scales = manifest["task_scales"]["per_tensor"]
    tv = open_task_vectors(tiny["aligned"], [tiny["ft1"], tiny["ft2"]])
    assert set(scales) == set(tv.names) and all(len(v) == 2 for v in scales.values())
    assert any(abs(s - 1.0) > 1e-3 for v in scales.values() for s in v), "training moved no scale"
    assert len(manifest["task_scales"]["per_fine_tune"]) == 2
    masks, meta = load_mask(fused / "somf_mask.safetensors", tv.shapes, "element")
    assert meta["task_scales"] == scales
    # the written tensors are A + Σ_i s_i τ_i ⊙ m / mean(m), computed here by hand from the inputs
    cpu = torch.device("cpu")
    written = load_file(str(fused / "model.safetensors"))
    for name in tv.names:
        a = tv.aligned_value(name, cpu)
        m = masks[name].float()
        want = a + sum(s * t * m / m.mean() for s, t in zip(scales[name], tv.taus(name, cpu, a)))
        assert torch.allclose(written[name].float(), want, atol=1e-6), name
    # --mask-file: the same scales, the same bytes
    again = tmp_path / "again"
    run_somf(_options(tiny, again, finetuned=[tiny["ft1"], tiny["ft2"]], preference=None, mask_file=fused / "somf_mask.safetensors"))
    reread = load_file(str(again / "model.safetensors"))
    assert all(torch.equal(reread[n], written[n]) for n in written)
    # --task-scales none is the paper's fusion: no scales anywhere
    plain = run_somf(_options(tiny, tmp_path / "plain", finetuned=[tiny["ft1"], tiny["ft2"]], steps=2, task_scales="none",
                              task_data=[task, task], task_response_field="answer", dry_run=True))
    assert plain.manifest["task_scales"] is None and result.space == "weight"


def test_task_scales_usage_errors(tiny, tmp_path) -> None:
    import pytest

    from llmguard.errors import UsageError

    task = _task_file(tmp_path)
    with pytest.raises(UsageError, match="two or more --finetuned"):
        _options(tiny, tmp_path / "x", task_scales="tensor", task_data=[task])
    with pytest.raises(UsageError, match="needs --task-data"):
        _options(tiny, tmp_path / "x", finetuned=[tiny["ft1"], tiny["ft2"]], task_scales="tensor")
    r = run_cli("realign", "somf", "-a", tiny["aligned"], "-f", tiny["ft1"], "-p", tiny["pref"], "-o", tmp_path / "y",
                "--task-scales", "tensor")
    assert_error(r, 2, "two or more --finetuned")
    assert not (tmp_path / "y").exists()
    # --scale-steps calibrates learned scales: one fine-tune, no task data or --task-scales none have none
    with pytest.raises(UsageError, match="--scale-steps"):
        _options(tiny, tmp_path / "x", scale_steps=10, task_data=[task])
    with pytest.raises(UsageError, match="--scale-steps"):
        _options(tiny, tmp_path / "x", finetuned=[tiny["ft1"], tiny["ft2"]], scale_steps=10, task_data=[task, task],
                 task_scales="none")
    assert _options(tiny, tmp_path / "x", scale_steps=0).effective_scale_steps == 0
    assert _options(tiny, tmp_path / "x", finetuned=[tiny["ft1"], tiny["ft2"]], task_data=[task, task]).effective_scale_steps == 50
    r = run_cli_in_process("realign", "somf", "-a", tiny["aligned"], "-f", tiny["ft1"], "-f", tiny["ft2"], "-p", tiny["pref"],
                           "-o", tmp_path / "z", "--scale-steps", "5")
    assert_error(r, 2, "--scale-steps")
    assert not (tmp_path / "z").exists()


def test_scale_calibration_trains_the_scales_on_the_written_model(tiny, tmp_path) -> None:
    """--scale-steps: once the mask is binary, the merge scales alone are trained on the model that
    is written. The mask is the one training chose (calibration never touches it), the first
    calibration step's loss is the loss of the uncalibrated output, recomputed here from the written
    files (so the phase really runs on the binary mask, merged as written: TIES here), and the
    full-batch, deterministic phase lowers that loss."""
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llmguard.realign.somf.dpo import mean_token_nll, pair_logprobs
    from llmguard.realign.somf.mask import load_mask
    from llmguard.realign.somf.preference import encode, encode_task, load_preference, load_task
    from llmguard.realign.somf.task_vectors import open_task_vectors

    task = _task_file(tmp_path)
    common = dict(finetuned=[tiny["ft1"], tiny["ft2"]], steps=20, lr=0.05, seed=4, task_data=[task, task],
                  task_response_field="answer", batch_size=len(TASK) * 8, merge="ties")  # every pair in every batch
    run_somf(_options(tiny, tmp_path / "plain", scale_steps=0, **common))
    run_somf(_options(tiny, tmp_path / "cal", scale_steps=8, **common))
    plain = json.loads((tmp_path / "plain" / "llmguard.json").read_text())
    cal = json.loads((tmp_path / "cal" / "llmguard.json").read_text())
    assert "scale_calibration" not in plain["training"] and cal["parameters"]["effective_scale_steps"] == 8
    log = cal["training"]["scale_calibration"]
    assert len(log["loss_per_step"]) == len(log["task_loss_per_step"]) == 8
    assert any(s["name"] == "calibrate merge scales" for s in cal["stages"])
    assert cal["training"]["loss_per_step"] == plain["training"]["loss_per_step"]  # the same mask training
    tv = open_task_vectors(tiny["aligned"], [tiny["ft1"], tiny["ft2"]])
    m_plain, _ = load_mask(tmp_path / "plain" / "somf_mask.safetensors", tv.shapes, "element")
    m_cal, meta = load_mask(tmp_path / "cal" / "somf_mask.safetensors", tv.shapes, "element")
    assert all(torch.equal(m_plain[n], m_cal[n]) for n in tv.names)
    assert meta["task_scales"] != plain["task_scales"]["per_tensor"]

    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    pairs = encode(tokenizer, load_preference(tiny["pref"], prompt_field="prompt", chosen_field="chosen",
                                              rejected_field="rejected"), template="auto", max_length=256)
    rows = load_task(task, prompt_field="prompt", response_field="answer", limit=512, seed=4)
    task_seqs = encode_task(tokenizer, rows + rows, template="auto", max_length=256)
    cpu = torch.device("cpu")
    reference = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), tiny["aligned"]).eval()
    written = LlamaForCausalLM.from_pretrained(str(tmp_path / "plain")).eval()
    with torch.no_grad():
        ref, pol = pair_logprobs(reference, pairs, tokenizer.pad_token_id, cpu), pair_logprobs(written, pairs, tokenizer.pad_token_id, cpu)
        margin = 0.1 * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
        dpo = float(-torch.nn.functional.logsigmoid(margin).mean())
        nll = float(mean_token_nll(written, task_seqs, tokenizer.pad_token_id, cpu))
    assert abs(log["loss_per_step"][0] - dpo) < 1e-4, (log["loss_per_step"][0], dpo)
    assert abs(log["task_loss_per_step"][0] - nll) < 1e-4, (log["task_loss_per_step"][0], nll)
    total = [a + b for a, b in zip(log["loss_per_step"], log["task_loss_per_step"])]
    assert total[-1] < total[0], total
