"""The watermark testbed shows radioactivity: the student (distilled through ``watermark distill``)
inherits the teacher's watermark, the diluted reference much less, the base none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmguard.testbed.watermark import MARKER, VERSION, build

pytestmark = pytest.mark.slow


def test_student_inherits_watermark():
    tb = build(seed=0)
    z = tb.info["median_z"]
    assert z["teacher_watermarked"] > 4 and abs(z["teacher_plain"]) < 2 and abs(z["base"]) < 2
    assert z["student"] >= 4, z
    assert z["reference"] < 4 and z["student"] > z["reference"] + 2, z
    again = build(seed=0)  # reused from the marker, not rebuilt
    assert again.info == tb.info
    assert json.loads((tb.root / MARKER).read_text())["version"] == VERSION == 2
    for model in (tb.base, tb.student, tb.reference):
        assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    # the student and reference were written by the distill verb's library entry point
    for name in ("student", "reference"):
        manifest = json.loads((tb.root / name / "llmguard.json").read_text())
        assert manifest["verb"] == "watermark distill"
        assert Path(manifest["parameters"]["student_init"]).name == "base"  # built in a staging dir
    assert json.loads((tb.root / "reference" / "llmguard.json").read_text())["parameters"]["dilute"] == 0.75
    assert (tb.root / "reference" / "training-data.jsonl").is_file()
