"""``llmguard eval ace-m3`` end to end on the tiny LLaVA-layout model (random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge_cli_util import read_records, run_cli  # type: ignore[import-not-found]

pytest.importorskip("PIL", reason="image inputs need Pillow")

from llmguard.testbed import judge as tj  # noqa: E402


def _items(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(2):
        tj.write_png(tmp_path / "img" / f"{i}.png", seed=i)
        rows.append({"id": f"m{i}", "image": f"img/{i}.png", "question": "What does the image show?",
                     "answer": "A normal chest x-ray.", "reference": "Normal chest radiograph."})
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    rows.append({"id": "missing-image", "image": "img/nope.png", "question": "Q?", "answer": "A."})
    rows.append({"id": "broken-image", "image": "img/broken.png", "question": "Q?", "answer": "A."})
    path = tmp_path / "mm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_branches_then_conclusion_with_per_item_image_errors(tiny_llava, tmp_path):
    items = _items(tmp_path)
    out = tmp_path / "ace.jsonl"
    res = run_cli("eval", "ace-m3", items, "--judge", tiny_llava, "-o", out, "--max-new-tokens", "8",
                  "--cache", tmp_path / "gen.sqlite", "--batch-size", "4", "--max-unparsed", "1")
    # the bad images are input errors (exit 3); everything else was judged
    assert res.returncode == 3, res.stderr
    assert "experimental" in res.stderr and "Traceback" not in res.stderr
    recs = read_records(out)
    by = {(r["id"], r["stage"], r["criterion"]): r for r in recs}
    for i in range(2):
        branch_hashes = {}
        for crit in ("REL", "COR", "EXP"):
            r = by[(f"m{i}", "branch", crit)]
            assert r["raw_output"] is not None and r["image_hash"] and r["prompt_hash"]
            # random weights: the output is noise, recorded as such, never a made-up score
            assert r["parse_status"] != "input_error"
            if r["parse_status"] != "ok":
                assert r["score"] is None
            branch_hashes[crit] = r["prompt_hash"]
        c = by[(f"m{i}", "conclusion", "overall")]
        assert c["raw_output"] is not None and c["experimental"] is True and c["merge"] == "model"
    assert "nope.png" in by[("missing-image", "branch", "REL")]["error"]
    assert "not a decodable image" in by[("broken-image", "conclusion", "overall")]["error"]

    # formula merge: needs parsed branch scores; with noise branches it says so per item
    out2 = tmp_path / "ace-mean.jsonl"
    res = run_cli("eval", "ace-m3", items, "--judge", tiny_llava, "-o", out2, "--max-new-tokens", "8",
                  "--cache", tmp_path / "gen.sqlite", "--merge", "mean", "--limit", "2", "--json", "--max-unparsed", "1")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["run"]["judges"][0]["generated"] == 0  # every branch output came from the cache
    concl = [r for r in read_records(out2) if r["stage"] == "conclusion"]
    for r in concl:
        assert r["parse_status"] in {"ok", "upstream_failed"}
        if r["parse_status"] == "upstream_failed":
            assert r["score"] is None and "branch" in r["error"]


def test_a_text_only_model_is_not_an_image_judge(tiny_judge, tmp_path):
    items = _items(tmp_path)
    out = tmp_path / "ace.jsonl"
    res = run_cli("eval", "ace-m3", items, "--judge", tiny_judge, "-o", out, "--limit", "2", "--no-cache")
    assert res.returncode == 3 and "Traceback" not in res.stderr
    recs = read_records(out)
    assert {r["parse_status"] for r in recs if r["stage"] == "branch"} == {"judge_error"}
    assert "image-text" in recs[0]["error"]
