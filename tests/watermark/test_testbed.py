"""The watermark testbed shows radioactivity: student inherits the teacher's watermark, the diluted reference less."""

from __future__ import annotations

import pytest

from llmguard.testbed.watermark import WatermarkTestbedParams, build


@pytest.mark.slow
def test_student_inherits_watermark(tmp_path_factory):
    params = WatermarkTestbedParams(n_train=800, steps=90, eval_samples=24)
    root = tmp_path_factory.mktemp("wm-testbed") / "tb"
    tb = build(root, seed=0, params=params)
    z = tb.info["median_z"]
    assert z["teacher_watermarked"] > 4 and abs(z["teacher_plain"]) < 2
    assert z["student"] > 3, z
    assert z["student"] > z["reference"] + 1, z
    again = build(root, seed=0, params=params)  # reused from the marker, not rebuilt
    assert again.info == tb.info
    assert (tb.tokenizer / "tokenizer.json").is_file() and (tb.student / "config.json").is_file()
