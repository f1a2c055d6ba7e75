"""``watermark scrub|spoof|distill`` end to end (real subprocesses, tiny real models) and their bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli_utils import assert_error, run_cli
from tests.watermark.wm_cli import invoke


def _save_llama(tok_dir: Path, out: Path, seed: int, vocab_extra: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok) + vocab_extra, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, word_tokenizer_dir):
    from llmguard.testbed.watermark import make_word_tokenizer

    root = tmp_path_factory.mktemp("attack-models")
    student = _save_llama(word_tokenizer_dir, root / "student", 1)
    reference = _save_llama(word_tokenizer_dir, root / "reference", 2)
    wide = _save_llama(word_tokenizer_dir, root / "wide", 3, vocab_extra=8)
    other_tok = make_word_tokenizer(60, root / "other-tok")
    other = _save_llama(root / "other-tok", root / "other", 4)
    del other_tok
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(word_tokenizer_dir))
    words = sorted(w for w in tok.get_vocab() if not w.startswith("<"))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(words[i:i + 3])}) + "\n" for i in range(12)))
    held = root / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": " ".join(words[-i - 3:-i])}) + "\n" for i in range(1, 7)))
    clean = root / "clean.jsonl"
    clean.write_text("".join(json.dumps({"text": " ".join(words[i:i + 20])}) + "\n" for i in range(0, 60, 10)))
    return {"student": student, "reference": reference, "wide": wide, "other": other, "prompts": prompts,
            "held": held, "clean": clean, "root": root}


def _gen_args(m, out, *extra):
    return ["watermark", "scrub", "--student", m["student"], "--reference", m["reference"], "--prompts", m["prompts"],
            "-o", out, "--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu", *extra]


def _gone(out: Path) -> bool:
    return not out.exists() and not (out.parent / f".{out.name}.llmguard-partial").exists()


def test_scrub_data_only_then_resume_repeats_the_records(models, tmp_path):
    out = tmp_path / "scrub"
    res = run_cli(*_gen_args(models, out, "--data-only", "--top-p", "0.9", "--seed", "5"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # data-only prints no table; logs are on stderr
    rows = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    prov = rows[3]["provenance"]
    assert prov["attack"] == "scrub" and prov["index"] == 3 and prov["batch"] == 0 and prov["alpha"] == 0.1
    assert prov["sampling"] == {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 5}
    assert rows[3]["instruction"] == json.loads(models["prompts"].read_text().splitlines()[3])["prompt"]
    manifest = json.loads((out / "llmguard.json").read_text())
    assert manifest["verb"] == "watermark scrub" and manifest["parameters"]["beta"] == 0.5 and "resume" not in manifest["parameters"]
    assert not (out / "student").exists()

    # an interrupted run: the partial directory holds one whole batch and a torn line
    partial = tmp_path / ".scrub2.llmguard-partial"
    shutil.copytree(out, partial)
    (partial / "llmguard.json").unlink()
    lines = (out / "data.jsonl").read_text().splitlines(keepends=True)
    (partial / "data.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    out2 = tmp_path / "scrub2"
    res = invoke(*_gen_args(models, out2, "--data-only", "--top-p", "0.9", "--seed", "5", "--resume"))
    assert res.returncode == 0, res.stderr
    assert (out2 / "data.jsonl").read_text() == (out / "data.jsonl").read_text()
    assert not partial.exists()

    # resuming with other generation parameters is refused
    shutil.copytree(out, partial)
    res = invoke(*_gen_args(models, out2.with_name("scrub3"), "--data-only", "--resume"))
    assert res.returncode == 2


def test_spoof_full_pipeline_with_closed_loop(models, tmp_path, tiny_lm_dir):
    out = tmp_path / "spoof"
    res = run_cli("watermark", "spoof", "--student", models["student"], "--reference", models["reference"],
                  "--prompts", models["prompts"], "-o", out, "--max-new-tokens", "8", "--batch-size", "6",
                  "--device", "cpu", "--student-init", tiny_lm_dir, "--lr", "1e-3", "--train-batch-size", "4",
                  "--eval-prompts", models["held"], "--eval-text", models["clean"], "--eval-max-new-tokens", "12",
                  "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["mode"] == "spoof" and doc["records"] == 12
    assert doc["train"]["steps"] == 3 and doc["train"]["output"] == str(out / "student")
    assert set(doc["models"]) == {"student", "reference", "spoof"}
    for m in doc["models"].values():
        assert m["num_texts"] > 0 and m["perplexity"] > 1
        assert 0 <= m["median_p_two_sided"] <= 1 and m["mean_neg_log10_p_two_sided"] >= 0
    assert doc["models"]["student"]["perplexity_vs_student"] == 1.0
    report = json.loads((out / "report.json").read_text())
    assert report["scheme"]["profile"] == "hf" and report["models"]["spoof"]["z"]
    assert (out / "student" / "config.json").is_file() and (out / "train.json").is_file()
    # the new student is an ordinary HF model directory: watermark generate loads it
    res = run_cli("watermark", "generate", "--model", out / "student", "--prompts", models["held"], "-o",
                  tmp_path / "g.jsonl", "--no-watermark", "--max-new-tokens", "4", "--device", "cpu")
    assert res.returncode == 0, res.stderr


def test_distill_with_dilution_and_lora(models, tmp_path, tiny_lm_dir):
    data = tmp_path / "d.jsonl"
    plain = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"instruction": "bada", "input": "", "output": "bade bada"}) + "\n" for _ in range(8)))
    plain.write_text("".join(json.dumps({"instruction": "bada", "output": "bado"}) + "\n" for _ in range(8)))
    out = tmp_path / "ref"
    res = run_cli("watermark", "distill", "--data", data, "--student-init", tiny_lm_dir, "-o", out, "--dilute", "0.5",
                  "--dilute-with", plain, "--lora", "--lora-r", "4", "--train-batch-size", "4", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["records"] == 8 and doc["diluted_records"] == 4 and doc["train"]["kind"] == "lora"
    assert (out / "adapter_config.json").is_file() and (out / "training-data.jsonl").is_file()
    assert json.loads((out / "llmguard.json").read_text())["parameters"]["learning_rate"] == 1e-5
    # the output exists: refused without --force, replaced with it
    res = invoke("watermark", "distill", "--data", data, "--student-init", tiny_lm_dir, "-o", out, "--device", "cpu")
    assert_error(res, 2, "already exists")
    res = invoke("watermark", "distill", "--data", data, "--student-init", tiny_lm_dir, "-o", out, "--device", "cpu",
                 "--force")
    assert res.returncode == 0, res.stderr
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()


@pytest.mark.parametrize("case", ["tokenizer", "vocab", "empty", "beta", "beta-neg", "alpha0", "alpha1", "exists",
                                  "no-init", "same-output"])
def test_attack_bad_input(models, tmp_path, case, tiny_lm_dir):
    out = tmp_path / "o"
    args = _gen_args(models, out, "--data-only")
    code, needle = {
        "tokenizer": (3, "do not share a tokenizer"), "vocab": (3, "--force-vocab"), "empty": (3, "empty prompt file"),
        "beta": (2, "--beta"), "beta-neg": (2, "--beta"), "alpha0": (2, "--alpha"), "alpha1": (2, "--alpha"),
        "exists": (2, "already exists"), "no-init": (2, "--student-init"), "same-output": (2, "refusing"),
    }[case]
    if case == "tokenizer":
        args[args.index("--reference") + 1] = models["other"]
    elif case == "vocab":
        args[args.index("--reference") + 1] = models["wide"]
    elif case == "empty":
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        args[args.index("--prompts") + 1] = empty
    elif case in ("beta", "beta-neg"):
        args += ["--beta", "0" if case == "beta" else "-0.5"]
    elif case in ("alpha0", "alpha1"):
        args += ["--alpha", "0" if case == "alpha0" else "1"]
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "no-init":
        args.remove("--data-only")
    elif case == "same-output":
        args[args.index("-o") + 1] = models["student"]
    res = invoke(*args)
    assert_error(res, code, needle)
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine"
    elif case != "same-output":
        assert _gone(out)
    else:
        assert (models["student"] / "config.json").is_file()


def test_force_vocab_warns_and_runs(models, tmp_path):
    out = tmp_path / "fv"
    args = _gen_args(models, out, "--data-only", "--force-vocab")
    args[args.index("--reference") + 1] = models["wide"]
    res = invoke(*args)
    assert res.returncode == 0, res.stderr
    assert "vocab sizes differ" in res.stderr and "--force-vocab" in res.stderr
    assert len((out / "data.jsonl").read_text().splitlines()) == 12


@pytest.mark.parametrize("case", ["broken", "missing-field", "no-file", "dilute-alone"])
def test_distill_bad_input(tmp_path, tiny_lm_dir, case):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "bada", "output": "bade"}\n' + {
        "broken": '{"instruction": "bada", "output": \n', "missing-field": '{"instruction": "bada"}\n',
        "no-file": "", "dilute-alone": ""}[case])
    args = ["watermark", "distill", "--data", data, "--student-init", tiny_lm_dir, "-o", tmp_path / "o", "--device", "cpu"]
    if case == "no-file":
        args[args.index("--data") + 1] = tmp_path / "nope.jsonl"
    if case == "dilute-alone":
        args += ["--dilute", "0.5"]
    res = invoke(*args)
    code, needle = {"broken": (3, "d.jsonl:2: not valid JSON"), "missing-field": (3, "d.jsonl:2: field 'output'"),
                    "no-file": (3, "no such file"), "dilute-alone": (2, "--dilute and --dilute-with")}[case]
    assert_error(res, code, needle)
    assert _gone(tmp_path / "o")
