"""``llmguard watermark detect`` end to end in a subprocess: outputs, golden agreement, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_utils import assert_one_line_error, run_cli

from tests.watermark.wm_cli import invoke

DATA = Path(__file__).parent / "data"


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def watermarked_words(tok_dir: Path, n_texts: int, length: int, seed: int, watermark: bool = True, **scheme_kw):
    """Text produced by the library's own processor on random logits (no model needed)."""
    import torch
    from transformers import PreTrainedTokenizerFast

    from llmguard.watermark.processor import WatermarkLogitsProcessor
    from llmguard.watermark.schemes import SchemeParams, build_scheme

    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    scheme = build_scheme(scheme_kw.pop("scheme", "kgw"), scheme_kw.pop("profile", "hf"),
                          SchemeParams(vocab_size=len(tok), **scheme_kw))
    proc = WatermarkLogitsProcessor(scheme)
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n_texts):
        ids = torch.tensor([[int(rng.integers(4, len(tok)))]])
        for _ in range(length):
            scores = torch.tensor(rng.normal(size=(1, len(tok))), dtype=torch.float32)
            scores[0, :4] = -float("inf")
            if watermark:
                scores = proc(ids, scores)
            probs = torch.softmax(scores, dim=-1)[0].numpy().astype(np.float64)
            nxt = int(rng.choice(len(tok), p=probs / probs.sum()))
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        texts.append(tok.decode(ids[0].tolist()))
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, word_tokenizer_dir):
    d = tmp_path_factory.mktemp("wm-corpus")
    wm = watermarked_words(word_tokenizer_dir, 4, 60, 1)
    plain = watermarked_words(word_tokenizer_dir, 4, 60, 2, watermark=False)
    recs = [{"id": f"wm{i}", "text": t, "prompt": t.split()[0]} for i, t in enumerate(wm)]
    recs += [{"id": f"plain{i}", "text": t} for i, t in enumerate(plain)]
    return {"dir": d, "wm": wm, "plain": plain, "jsonl": write_jsonl(d / "texts.jsonl", recs)}


def parse_jsonl(out: str):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_json_records_are_complete_and_detect(corpus, word_tokenizer_dir):
    r = run_cli("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--jsonl")
    assert r.returncode == 0, r.stderr
    recs = parse_jsonl(r.stdout)
    assert len(recs) == 8
    for rec in recs:
        for k in ("z", "p", "log10_p", "num_tokens_scored", "num_green_tokens", "green_fraction", "prediction"):
            assert k in rec
        cfg = rec["config"]
        for k in ("scheme", "profile", "gamma", "delta", "key", "context_width", "seeding", "vocab_size", "dedup",
                  "rng_device", "threshold"):
            assert k in cfg
        assert cfg["vocab_size"] == 124 and cfg["profile"] == "hf"
    wm = [r for r in recs if r["id"].startswith("wm")]
    plain = [r for r in recs if r["id"].startswith("plain")]
    assert all(r["prediction"] and r["z"] > 4 for r in wm)
    assert all(not r["prediction"] and abs(r["z"]) < 3.5 for r in plain)


def test_json_is_one_document_with_the_same_records(corpus, word_tokenizer_dir):
    args = ("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--aggregate")
    doc = json.loads(invoke(*args, "--json").stdout)  # one document: json.loads of the whole stdout
    lines = parse_jsonl(invoke(*args, "--jsonl").stdout)
    assert doc["records"] == lines[:-1] and doc["aggregate"] == lines[-1]["aggregate"]
    assert doc["config"]["profile"] == "hf"
    r = invoke(*args, "--json", "--jsonl")
    assert_one_line_error(r, 2, "--jsonl")


def test_human_table_and_stdin(corpus, word_tokenizer_dir):
    r = run_cli("watermark", "detect", "-", "--tokenizer", word_tokenizer_dir, input=corpus["wm"][0])
    assert r.returncode == 0, r.stderr
    assert "yes" in r.stdout and "kgw/hf" in r.stdout and "dedup=none" in r.stdout


def test_prompt_stripping_and_aggregate(corpus, word_tokenizer_dir):
    r = run_cli("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--jsonl",
                "--prompt-field", "prompt", "--aggregate", "--group-tokens", "50")
    assert r.returncode == 0, r.stderr
    recs = parse_jsonl(r.stdout)
    texts, agg = recs[:-1], recs[-1]["aggregate"]
    assert all(t["prompt_stripped"] for t in texts if t["id"].startswith("wm"))
    assert all(t["num_tokens"] == 60 for t in texts if t["id"].startswith("wm"))  # 61 words minus the prompt
    assert agg["num_texts"] == 8
    pooled = agg["pooled"]
    assert pooled["tape"] == "global" and pooled["dedup"] == "window+token"
    assert pooled["num_tokens_scored"] <= sum(t["num_tokens_scored"] for t in texts)
    assert pooled["excluded_prompt_windows"] >= 0
    assert agg["groups"]["num_groups"] >= 9
    assert "median_z" in agg and "mean_neg_log10_p" in agg
    assert agg["prediction"] is True


def test_matches_transformers_through_the_cli(tmp_path):
    golden = json.loads((DATA / "golden_hf.json").read_text())
    case = golden["cases"][0]
    src = write_jsonl(tmp_path / "ids.jsonl", [{"ids": t["ids"]} for t in case["texts"]])
    r = run_cli("watermark", "detect", src, "--ids-field", "ids", "--vocab-size", case["params"]["vocab_size"],
                "--jsonl")
    assert r.returncode == 0, r.stderr
    for want, have in zip(case["texts"], parse_jsonl(r.stdout)):
        assert have["z"] == want["z_score"]
        assert have["num_green_tokens"] == want["num_green_tokens"]


def test_show_and_html(corpus, word_tokenizer_dir, tmp_path):
    page = tmp_path / "view.html"
    r = run_cli("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--show", "--html", page,
                "--jsonl")
    assert r.returncode == 0, r.stderr
    assert "«" in r.stderr  # NO_COLOR view on stderr in --json mode
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http" not in html
    assert html.count('class="g') > 50 and html.count('class="r') > 10
    word = corpus["wm"][0].split()[3]
    assert word in html


def test_fail_on_detect_exits_10(corpus, word_tokenizer_dir, tmp_path):
    r = run_cli("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--fail-on-detect")
    assert_one_line_error(r, 10, "watermark detected")
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": t} for t in corpus["plain"]])
    r = invoke("watermark", "detect", plain, "--tokenizer", word_tokenizer_dir, "--fail-on-detect")
    assert r.returncode == 0, r.stderr
    r = invoke("watermark", "detect", plain, "--tokenizer", word_tokenizer_dir, "--fail-on-detect", "--aggregate")
    assert r.returncode == 0, r.stderr


def test_fpr_threshold(corpus, word_tokenizer_dir):
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--jsonl", "--fpr", "1e-3",
                "--pvalue", "binomial")
    recs = parse_jsonl(r.stdout)
    assert recs[0]["config"]["threshold"]["fpr"] == 1e-3
    for rec in recs:
        assert rec["prediction"] == (rec["p"] < 1e-3)
        assert rec["p_method"] == "binomial"


def test_vocab_mismatch_warns(corpus, word_tokenizer_dir, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 128}))
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--model", model,
                "--vocab-size", "model", "--jsonl")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "124" in r.stderr and "128" in r.stderr
    assert parse_jsonl(r.stdout)[0]["config"]["vocab_size"] == 128


@pytest.mark.parametrize(
    "content,needles",
    [
        ('{"text": "ba be bi"}\n{"text": broken\n', ["bad.jsonl:2", "not valid JSON"]),
        ('{"text": "   "}\n', ["bad.jsonl:1", "empty text"]),
        ('{"nottext": "ba"}\n', ["bad.jsonl:1", "'text'"]),
        ('{"text": "babe"}\n', ["bad.jsonl:1", "fewer than the 2 needed"]),
        ("[1, 2]\n", ["bad.jsonl:1", "expected a JSON object"]),
    ],
)
def test_bad_input_exit_3(tmp_path, word_tokenizer_dir, content, needles):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    r = invoke("watermark", "detect", bad, "--tokenizer", word_tokenizer_dir)
    assert_one_line_error(r, 3, *needles)


def test_skip_bad_keeps_going(tmp_path, corpus, word_tokenizer_dir):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text(json.dumps({"text": corpus["wm"][0]}) + "\n{oops\n" + json.dumps({"text": "babe"}) + "\n")
    r = invoke("watermark", "detect", bad, "--tokenizer", word_tokenizer_dir, "--skip-bad", "--jsonl")
    assert r.returncode == 0, r.stderr
    assert len(parse_jsonl(r.stdout)) == 1
    assert "mixed.jsonl:2" in r.stderr and "mixed.jsonl:3" in r.stderr


def test_usage_and_path_errors(tmp_path, corpus, word_tokenizer_dir):
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--profile", "nope")
    assert_one_line_error(r, 2, "--profile", "hf", "kirchenbauer", "markllm", "fast")
    r = invoke("watermark", "detect", corpus["jsonl"], "--scheme", "unigram", "--profile", "kirchenbauer",
                "--tokenizer", word_tokenizer_dir)
    assert_one_line_error(r, 2, "unigram")
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", tmp_path / "missing")
    assert_one_line_error(r, 3, "missing")
    r = invoke("watermark", "detect", tmp_path / "nofile.jsonl", "--tokenizer", word_tokenizer_dir)
    assert_one_line_error(r, 3, "nofile.jsonl")
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--dedup", "sometimes")
    assert_one_line_error(r, 2, "--dedup")
    r = invoke("watermark", "detect", corpus["jsonl"])
    assert_one_line_error(r, 2, "--tokenizer")


@pytest.mark.parametrize("profile,seeding", [("kirchenbauer", "selfhash"), ("markllm", "time"), ("fast", None)])
def test_profiles_via_cli_detect_their_own_text(tmp_path, word_tokenizer_dir, profile, seeding):
    kw = {"seeding": seeding} if seeding else {}
    texts = watermarked_words(word_tokenizer_dir, 2, 50, 7, profile=profile, **kw)
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    args = ["--seeding", seeding] if seeding else []
    run = run_cli if profile == "kirchenbauer" else invoke  # one real subprocess, the others in-process
    r = run("watermark", "detect", src, "--tokenizer", word_tokenizer_dir, "--profile", profile, *args, "--jsonl")
    assert r.returncode == 0, r.stderr
    assert all(rec["z"] > 4 for rec in parse_jsonl(r.stdout))


def test_rng_device_cuda_without_gpu_is_a_resource_error(corpus, word_tokenizer_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the cuda generator path is exercised instead")
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--rng-device", "cuda")
    assert_one_line_error(r, 4, "--rng-device cuda")
    r = invoke("watermark", "detect", corpus["jsonl"], "--tokenizer", word_tokenizer_dir, "--rng-device", "tpu")
    assert_one_line_error(r, 2, "--rng-device")
