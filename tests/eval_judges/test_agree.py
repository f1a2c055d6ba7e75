"""``eval agree`` on constructed predictions: joins, pairs, swap consistency, collapse, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from judge_cli_util import run_cli, run_cli_in_process  # type: ignore[import-not-found]

from llmguard.eval.agree import agreement_report


def _hdc_single(i, crit, scores, status="ok", group=None):
    return {"id": f"i{i}", "verb": "hdc", "criterion": crit, "mode": "single", "order": "single",
            "group": group or f"g{i // 2}", "parse_status": status, "scores": scores if status == "ok" else {},
            "score": float(np.mean(list(scores.values()))) if status == "ok" else None}


def test_single_mode_join_pairs_and_icc_forms():
    rng = np.random.default_rng(0)
    human = rng.integers(0, 6, size=40)
    judge = np.clip(human + rng.integers(-1, 2, size=40), 0, 5)
    preds = [_hdc_single(i, "COR", {"ACC": int(judge[i])}) for i in range(40)]
    preds.append(_hdc_single(99, "COR", {"ACC": 3}, status="missing_field"))
    labels = [{"id": f"i{i}", "ACC": int(human[i])} for i in range(40)]
    rep = agreement_report(preds, labels, resamples=50)
    cells = {c["criterion"]: c for c in rep["cells"]}
    acc = cells["ACC"]
    assert acc["n"] == 40 and acc["items"] == 20 and cells["COR"]["unparsed"] == 1
    m = acc["metrics"]
    assert m["pearson"] == pytest.approx(stats.pearsonr(judge, human).statistic, abs=1e-6)
    assert m["kendall_tau_b"] == pytest.approx(stats.kendalltau(judge, human).statistic, abs=1e-6)
    # pairs: the two answers of each group (i, i+1)
    jd, hd = judge[0::2] - judge[1::2], human[0::2] - human[1::2]
    keep = hd != 0
    assert acc["pairs"] == 20
    assert m["pairwise_accuracy_without_ties"] == pytest.approx(np.mean(np.sign(jd[keep]) == np.sign(hd[keep])))
    assert m["pairwise_accuracy_with_ties"] == pytest.approx(np.mean(np.sign(jd) == np.sign(hd)))
    assert set(rep["icc_forms"]) == {"icc2_1_absolute_agreement", "icc3_1_consistency"}


def test_offset_judge_separates_the_icc_forms():
    human = np.array([0, 1, 2, 3, 4, 1, 2, 3], dtype=float)
    preds = [{"id": str(i), "criterion": "X", "score": h + 1.0} for i, h in enumerate(human)]
    labels = [{"id": str(i), "X": h} for i, h in enumerate(human)]
    m = agreement_report(preds, labels, resamples=0)["cells"][0]["metrics"]
    assert m["icc3_1_consistency"] == pytest.approx(1.0)
    assert m["icc2_1_absolute_agreement"] < 0.9
    assert m["mae"] == pytest.approx(1.0) and m["exact"] == 0.0 and m["within_1"] == 1.0


def test_pairwise_swap_consistency_and_order_mapping():
    preds, labels = [], []
    # item p0: consistent in both orders; p1: position-biased (prefers slot 1 whatever it holds)
    for pid, ab, ba in [("p0", (4, 2), (4, 2)), ("p1", (4, 2), (2, 4))]:
        for order, (sa, sb) in (("ab", ab), ("ba", ba)):
            preds.append({"id": pid, "verb": "hdc", "criterion": "EXP", "mode": "pairwise", "order": order,
                          "parse_status": "ok", "scores": {"a": {"CLAR": sa}, "b": {"CLAR": sb}},
                          "score": {"a": sa, "b": sb}})
        labels += [{"id": pid, "response": "a", "CLAR": 5, "EXP": 5}, {"id": pid, "response": "b", "CLAR": 1, "EXP": 1}]
    rep = agreement_report(preds, labels, resamples=0)
    cell = {c["criterion"]: c for c in rep["cells"]}["CLAR"]
    assert cell["swap_pairs"] == 2
    assert cell["metrics"]["swap_consistency"] == pytest.approx(0.5)
    # orders averaged: p0 a=4,b=2 (right), p1 a=3,b=3 (tie: wrong without ties)
    assert cell["metrics"]["pairwise_accuracy_without_ties"] == pytest.approx(0.5)


def test_collapse_warning_and_cli_errors(tmp_path: Path):
    pred = tmp_path / "pred.jsonl"
    human = tmp_path / "human.jsonl"
    pred.write_text("".join(json.dumps({"id": str(i), "criterion": "X", "score": 3}) + "\n" for i in range(20)))
    human.write_text("".join(json.dumps({"id": str(i), "X": i % 5}) + "\n" for i in range(20)))
    res = run_cli("eval", "agree", "--pred", pred, "--human", human, "--json", "--bootstrap", "20")
    assert res.returncode == 0, res.stderr
    assert "variance collapsed" in res.stderr
    cell = json.loads(res.stdout)["cells"][0]
    assert any("collapsed" in w for w in cell["warnings"]) and cell["metrics"]["pearson"] is None

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "zzz", "Y": 1}) + "\n")
    res = run_cli_in_process("eval", "agree", "--pred", pred, "--human", other)
    assert res.returncode == 3 and "no prediction matched" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{oops\n')
    res = run_cli_in_process("eval", "agree", "--pred", bad, "--human", human)
    assert res.returncode == 3 and "bad.jsonl:2" in res.stderr


def test_breakdown_by_a_kept_field():
    preds, labels = [], []
    for i in range(12):
        scen = "qa" if i % 2 else "imaging"
        preds.append({"id": str(i), "criterion": "ACC", "score": i % 6, "meta": {"scenario": scen}})
        labels.append({"id": str(i), "ACC": (i % 6) if scen == "qa" else 5 - (i % 6)})
    rep = agreement_report(preds, labels, by=["criterion", "scenario"], resamples=0)
    cells = {(c["criterion"], c["scenario"]): c for c in rep["cells"]}
    assert cells[("ACC", "qa")]["metrics"]["pearson"] == pytest.approx(1.0)
    assert cells[("ACC", "imaging")]["metrics"]["pearson"] == pytest.approx(-1.0)
    assert cells[("ACC", "qa")]["n"] == 6
