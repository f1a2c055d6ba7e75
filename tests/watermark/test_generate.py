"""Watermarked generation on a tiny real Llama: each profile's text is detected by that profile only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_utils import assert_one_line_error, run_cli

# (scheme, profile, seeding) with each profile's default seeding; hf lefthash ≡ kirchenbauer simple_1 by
# design (the same watermark), so the kirchenbauer entry uses its default selfhash.
PROFILES = [
    ("kgw", "hf", "lefthash"),
    ("kgw", "hf", "selfhash"),
    ("kgw", "kirchenbauer", "selfhash"),
    ("kgw", "markllm", "time"),
    ("kgw", "fast", None),
    ("unigram", "zhao", None),
]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny matrices; avoids oversubscription on a busy 2-core machine


def _scheme(vocab, scheme, profile, seeding, **kw):
    from llmguard.watermark.schemes import SchemeParams, build_scheme

    return build_scheme(scheme, profile, SchemeParams(vocab_size=vocab, seeding=seeding, **kw))


@pytest.fixture(scope="module")
def generations(tiny_lm_dir):
    import torch

    from llmguard.inference import generate, load_causal_lm
    from llmguard.watermark.processor import WatermarkLogitsProcessor

    torch.set_num_threads(1)
    model, tok = load_causal_lm(tiny_lm_dir, device="cpu")
    vocab = len(tok)
    words = tok.convert_ids_to_tokens(list(range(4, vocab)))
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(words, size=3)) for _ in range(6)]
    out = {}
    for spec in PROFILES + [None]:
        proc = None if spec is None else WatermarkLogitsProcessor(_scheme(vocab, *spec, delta=4.0))
        texts = generate(model, tok, prompts, max_new_tokens=60, batch_size=3, do_sample=True, seed=1,
                         logits_processor=proc)
        out[spec] = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return vocab, out


def _median_z(vocab, spec, id_lists):
    from llmguard.watermark.detect import score_token_lists

    scheme = _scheme(vocab, *spec)
    ok = [ids for ids in id_lists if len(ids) > scheme.prefix_len + 5]
    return float(np.median([s.result.z for s in score_token_lists(scheme, ok, "none")]))


def test_each_profile_detects_only_its_own_text(generations):
    vocab, out = generations
    matrix = {}
    for gen in PROFILES:
        for det in PROFILES:
            matrix[(gen, det)] = _median_z(vocab, det, out[gen])
    for gen in PROFILES:
        assert matrix[(gen, gen)] > 4.0, (gen, matrix[(gen, gen)])
        for det in PROFILES:
            if det != gen:
                assert abs(matrix[(gen, det)]) < 3.0, (gen, det, matrix[(gen, det)])
    for det in PROFILES:
        assert abs(_median_z(vocab, det, out[None])) < 3.0


def test_hf_lefthash_equals_kirchenbauer_simple_1(generations):
    vocab, out = generations
    a = _median_z(vocab, ("kgw", "hf", "lefthash"), out[("kgw", "hf", "lefthash")])
    b = _median_z(vocab, ("kgw", "kirchenbauer", "simple_1"), out[("kgw", "hf", "lefthash")])
    assert a == b and a > 4


def test_generate_cli_end_to_end(tmp_path, tiny_lm_dir, word_tokenizer_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in
                               enumerate(["baba bebe", "bibi bobo", "bubu daba", "dede didi"])))
    out = tmp_path / "out.jsonl"
    r = run_cli("watermark", "generate", "--model", tiny_lm_dir, "--prompts", prompts, "-o", out,
                "--profile", "kirchenbauer", "--seeding", "simple_1", "--delta", "4", "--max-new-tokens", "50",
                "--batch-size", "2", "--device", "cpu", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 4 and [r["id"] for r in recs] == [0, 1, 2, 3]
    assert all(not rec["text"].startswith(rec["prompt"]) for rec in recs)  # prompt stripped
    assert recs[0]["watermark"]["profile"] == "kirchenbauer" and recs[0]["sampling"]["do_sample"] is True
    manifest = json.loads((tmp_path / "out.jsonl.llmguard.json").read_text())
    assert manifest["verb"] == "watermark generate"
    r = run_cli("watermark", "detect", out, "--tokenizer", word_tokenizer_dir, "--profile", "kirchenbauer",
                "--seeding", "simple_1", "--dedup", "none", "--json", "--aggregate")
    assert r.returncode == 0, r.stderr
    agg = json.loads(r.stdout)["aggregate"]  # --json: one document
    assert agg["median_z"] > 4 and agg["prediction"]

    sft = tmp_path / "sft.jsonl"
    r = run_cli("watermark", "generate", "--model", tiny_lm_dir, "--prompts", prompts, "-o", sft, "--no-watermark",
                "--format", "sft", "--max-new-tokens", "8", "--device", "cpu", "--greedy", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    rec = json.loads(sft.read_text().splitlines()[0])
    assert set(rec) >= {"instruction", "input", "output"} and rec["instruction"] == "baba bebe"

    from tests.watermark.wm_cli import invoke

    r = invoke("watermark", "generate", "--model", tiny_lm_dir, "--prompts", prompts, "-o", sft)
    assert_one_line_error(r, 2, "exists")
    r = invoke("watermark", "generate", "--model", tiny_lm_dir, "--prompts", tmp_path / "none.jsonl", "-o",
               tmp_path / "x.jsonl")
    assert_one_line_error(r, 3, "none.jsonl")
    r = invoke("watermark", "generate", "--model", tiny_lm_dir, "--prompts", prompts, "-o", tmp_path / "y.jsonl",
               "--profile", "zhao")
    assert_one_line_error(r, 2, "--profile")


def test_generate_plain_text_prompts_in_process(tmp_path, tiny_lm_dir):
    from tests.watermark.wm_cli import invoke

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("baba bebe\n\nbibi bobo\n")
    out = tmp_path / "o.jsonl"
    r = invoke("watermark", "generate", "--model", tiny_lm_dir, "--prompts", prompts, "-o", out,
               "--profile", "fast", "--max-new-tokens", "6", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["prompt"] for x in recs] == ["baba bebe", "bibi bobo"]
    assert recs[0]["watermark"]["profile"] == "fast" and recs[0]["watermark"]["vocab_source"] == "tokenizer"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    r = invoke("watermark", "generate", "--model", tiny_lm_dir, "--prompts", empty, "-o", tmp_path / "e.jsonl")
    assert r.returncode == 3 and "no prompts" in r.stderr
