"""CDG-KD scrub and spoof on fresh watermark-testbed builds, through the CLI, one setting for every seed.

Bounds: the radioactive student's median z ≥ 4; after scrub the new student's median |z| ≤ 2 and the
two-sided test does not flag it; after spoof the new student's median z exceeds the student's; a
spoof from the weak (diluted) student, against the unwatermarked base, lifts it over the z > 4
threshold it misses; the scrubbed, the spoofed and the weak-spoofed students' perplexity on clean
held-out text stays within 20 % of (not above 1.2 ×) the radioactive student's.

CI runs seed 0; ``LLMGUARD_WM_SEEDS=0,1,2`` runs more (each seed: one testbed build, three attacks).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.cli_utils import run_cli

pytestmark = pytest.mark.slow

SEEDS = [int(s) for s in os.environ.get("LLMGUARD_WM_SEEDS", "0").split(",") if s.strip()]


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def attacked(request, tmp_path_factory):
    from llmguard.testbed.watermark import build

    tb = build(seed=request.param)
    work = tmp_path_factory.mktemp(f"wm-attacks-{request.param}")
    out = {}
    for name, mode, weak in (("scrub", "scrub", False), ("spoof", "spoof", False), ("weak", "spoof", True)):
        res = run_cli("-q", "watermark", *tb.attack_args(mode, weak=weak), "-o", work / name, "--json", timeout=900)
        assert res.returncode == 0, res.stderr
        out[name] = json.loads(res.stdout)
    return tb, out


def test_radioactive_student(attacked):
    _, out = attacked
    assert out["scrub"]["models"]["student"]["median_z"] >= 4
    assert out["scrub"]["models"]["student"]["median_p"] < 1e-4


def test_scrub_removes_the_watermark_without_overshooting(attacked):
    _, out = attacked
    new = out["scrub"]["models"]["scrub"]
    assert abs(new["median_z"]) <= 2, new["median_z"]
    assert new["median_p_two_sided"] > 0.05 and new["flagged_two_sided"] < 0.2, new


def test_spoof_amplifies_the_watermark(attacked):
    _, out = attacked
    assert out["spoof"]["models"]["spoof"]["median_z"] > out["spoof"]["models"]["student"]["median_z"]


def test_spoof_from_a_weak_student_crosses_the_threshold(attacked):
    _, out = attacked
    weak = out["weak"]["models"]
    assert weak["student"]["median_z"] < 4 < weak["spoof"]["median_z"], weak


def test_perplexity_on_clean_text_stays_within_20_percent(attacked):
    _, out = attacked
    student_ppl = out["scrub"]["models"]["student"]["perplexity"]
    assert out["scrub"]["models"]["scrub"]["perplexity_vs_student"] <= 1.2
    assert out["spoof"]["models"]["student"]["perplexity"] == pytest.approx(student_ppl)
    assert out["spoof"]["models"]["spoof"]["perplexity_vs_student"] <= 1.2
    assert out["weak"]["models"]["spoof"]["perplexity"] <= 1.2 * student_ppl
