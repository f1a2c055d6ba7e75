"""``llmguard eval hdc`` end to end on the testbed's tiny trained judge (subprocess, real files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from judge_cli_util import read_records, run_cli, run_cli_in_process  # type: ignore[import-not-found]

from llmguard.testbed import judge as tj

COMMON = ("--max-new-tokens", "48", "--batch-size", "8")


def test_hdc_scores_track_the_known_signal_and_agree_matches_scipy(tiny_judge, hdc_data, tmp_path):
    out = tmp_path / "hdc.jsonl"
    res = run_cli("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", out,
                  "--cache", hdc_data["cache"], "--aggregate", "weights:ACC=2", *COMMON)
    assert res.returncode == 0, res.stderr
    recs = read_records(out)
    assert len(recs) == 16 * 3
    assert {r["criterion"] for r in recs} == {"REL", "COR", "EXP"}
    for r in recs:
        assert r["parse_status"] == "ok", r["raw_output"]
        assert len(r["prompt_hash"]) == 64 and len(r["template_hash"]) == 64 and r["judge_fingerprint"]
        assert r["aggregate"] == "weights:ACC=2"
        assert r["attempts"][0]["do_sample"] is False
    cor = next(r for r in recs if r["criterion"] == "COR")
    s = cor["scores"]
    assert cor["score"] == pytest.approx((2 * s["ACC"] + s["INFO"] + s["UNC"]) / 4)
    manifest = json.loads(out.with_name(out.name + ".llmguard.json").read_text())
    assert manifest["verb"] == "eval hdc" and manifest["parameters"]["aggregate"] == "weights:ACC=2"
    assert "REL" in res.stdout and "CONT" in res.stdout

    ag = run_cli("eval", "agree", "--pred", out, "--human", hdc_data["labels"], "--json", "--bootstrap", "50",
                 "--criteria", "ACC,CONT,REL")
    assert ag.returncode == 0, ag.stderr
    report = json.loads(ag.stdout)
    cells = {c["criterion"]: c for c in report["cells"]}
    # the judge was trained on other (subject, symptom, days) combinations: this is held-out agreement
    assert cells["ACC"]["metrics"]["pearson"] > 0.8
    # recompute one cell independently from the files
    labels = {json.loads(line)["id"]: json.loads(line) for line in hdc_data["labels"].read_text().splitlines()}
    pairs = [(r["scores"]["CONT"], labels[r["id"]]["CONT"]) for r in recs if r["criterion"] == "REL"]
    j, h = np.array(pairs, dtype=float).T
    m = cells["CONT"]["metrics"]
    if j.std() > 0:
        assert m["pearson"] == pytest.approx(stats.pearsonr(j, h).statistic, abs=1e-6)
        assert m["spearman"] == pytest.approx(stats.spearmanr(j, h).statistic, abs=1e-6)
        assert m["kendall_tau_b"] == pytest.approx(stats.kendalltau(j, h).statistic, abs=1e-6)
    assert m["mae"] == pytest.approx(np.abs(j - h).mean(), abs=1e-6)
    lo, hi = cells["CONT"]["ci95"]["pearson"]
    assert lo <= m["pearson"] <= hi


def test_resume_skips_done_records_and_cache_serves_repeats(tiny_judge, hdc_data, tmp_path):
    out = tmp_path / "part.jsonl"
    first = run_cli("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", out, "--limit", "3",
                    "--aspects", "COR", "--cache", hdc_data["cache"], *COMMON)
    assert first.returncode == 0, first.stderr
    assert len(read_records(out)) == 3
    # an interrupted writer leaves a torn last line: resume cuts it and goes on
    with open(out, "a") as fh:
        fh.write('{"id": "torn", "crit')
    again = run_cli("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", out, "--limit", "6",
                    "--aspects", "COR", "--cache", hdc_data["cache"], "--resume", "--json", *COMMON)
    assert again.returncode == 0, again.stderr
    recs = read_records(out)
    assert [r["id"] for r in recs] == [f"test-{i:04d}" for i in range(6)]
    summary = json.loads(again.stdout)
    assert summary["run"]["skipped_resume"] == 3

    # the same prompts into a new file: all from the cache, identical outputs, no model load
    out2 = tmp_path / "again.jsonl"
    cached = run_cli("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", out2, "--limit", "6",
                     "--aspects", "COR", "--cache", hdc_data["cache"], "--json", *COMMON)
    assert cached.returncode == 0, cached.stderr
    recs2 = read_records(out2)
    assert all(r["cached"] for r in recs2)
    assert [r["raw_output"] for r in recs2] == [r["raw_output"] for r in recs]
    judge_stats = json.loads(cached.stdout)["run"]["judges"][0]
    assert judge_stats["generated"] == 0 and judge_stats["load_seconds"] == 0

    # resuming with another judge would mix judges in one file: refused before anything loads
    other_judge = tmp_path / "other-judge"
    shutil.copytree(tiny_judge, other_judge)
    cfg = json.loads((other_judge / "generation_config.json").read_text())
    (other_judge / "generation_config.json").write_text(json.dumps({**cfg, "max_new_tokens": 7}))
    other = run_cli("eval", "hdc", hdc_data["items"], "--judge", other_judge, "-o", out, "--resume",
                    "--aspects", "COR", *COMMON)
    assert other.returncode == 2 and "another judge" in other.stderr

    # refusing to overwrite without --resume/--force
    refused = run_cli("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", out2, *COMMON)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr


def test_bad_items_and_a_non_generative_judge_are_recorded_and_the_run_goes_on(tiny_judge, tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    classifier = tmp_path / "classifier"
    DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=16, hidden_dim=32, n_layers=1, n_heads=2)).save_pretrained(classifier)
    items = tj.judge_items(3)
    path = tmp_path / "items.jsonl"
    lines = [json.dumps({k: it[k] for k in ("id", "question", "answer")}) for it in items]
    lines.insert(1, json.dumps({"id": "no-answer", "question": "Is this fine?"}))
    lines.insert(2, "{not json")
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"

    strict = run_cli("eval", "hdc", path, "--judge", tiny_judge, "-o", out, *COMMON)
    assert strict.returncode == 3 and ":3:" in strict.stderr and "--skip-bad" in strict.stderr

    res = run_cli("eval", "hdc", path, "--judge", tiny_judge, "--expert-mkc", classifier, "-o", out,
                  "--skip-bad", "--no-cache", "--force", *COMMON)
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr
    recs = read_records(out)
    by = {(r["id"], r["criterion"]): r for r in recs}
    assert by[("no-answer", "REL")]["parse_status"] == "input_error"
    assert "'answer'" in by[("no-answer", "REL")]["error"]
    assert by[("line-3", "EXP")]["parse_status"] == "input_error"
    good = [it["id"] for it in items]
    for i in good:
        assert by[(i, "REL")]["parse_status"] == "ok"
        assert by[(i, "EXP")]["parse_status"] == "ok"
        assert by[(i, "COR")]["parse_status"] == "judge_error"
        assert str(classifier) in by[(i, "COR")]["error"]
        assert by[(i, "COR")]["score"] is None


def test_pairwise_swap_records_both_orders_and_agree_reports_swap_consistency(tiny_judge, tmp_path):
    items = tj.pairwise_items(4)
    path = tj.write_items(items, tmp_path / "pairs.jsonl")
    labels = tj.write_labels(items, tmp_path / "pair-labels.jsonl")
    out = tmp_path / "pairs-out.jsonl"
    res = run_cli("eval", "hdc", path, "--judge", tiny_judge, "-o", out, "--pairwise", "--swap", "--aspects", "COR",
                  "--no-cache", "--max-new-tokens", "48")
    assert res.returncode == 0, res.stderr
    recs = read_records(out)
    assert sorted((r["id"], r["order"]) for r in recs) == sorted((it["id"], o) for it in items for o in ("ab", "ba"))
    for r in recs:
        assert r["parse_status"] == "ok", r["raw_output"]
        assert set(r["scores"]) == {"a", "b"} and r["preferred"] in {"a", "b", "tie"}
    ag = run_cli("eval", "agree", "--pred", out, "--human", labels, "--json", "--bootstrap", "0", "--criteria", "COR,ACC")
    assert ag.returncode == 0, ag.stderr
    cell = {c["criterion"]: c for c in json.loads(ag.stdout)["cells"]}["COR"]
    assert cell["swap_pairs"] == 4 and cell["pairs"] == 4
    assert cell["metrics"]["swap_consistency"] is not None
    assert cell["metrics"]["pairwise_accuracy_without_ties"] is not None


def test_usage_errors_are_one_line(tiny_judge, hdc_data, tmp_path):
    res = run_cli_in_process("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", tmp_path / "x.jsonl", "--swap")
    assert res.returncode == 2 and "--swap" in res.stderr
    res = run_cli_in_process("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", tmp_path / "x.jsonl", "--aggregate", "weights:NOPE=2")
    assert res.returncode == 2 and "NOPE" in res.stderr
    res = run_cli_in_process("eval", "hdc", tmp_path / "missing.jsonl", "--judge", tiny_judge, "-o", tmp_path / "x.jsonl")
    assert res.returncode == 3 and "missing.jsonl" in res.stderr


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_judge, hdc_data, tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    res = run_cli("eval", "hdc", hdc_data["items"], "--judge", tiny_judge, "-o", tmp_path / "v.jsonl", "--backend", "vllm")
    assert res.returncode == 4 and "vllm" in res.stderr and "Traceback" not in res.stderr
