"""The whole corpus of broken inputs and hostile situations against every verb (see docs/reliability.md)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import run_all  # noqa: E402
from report import DOC, render  # noqa: E402


def test_every_case_has_the_documented_outcome_and_the_page_is_current(corpus_env, tmp_path: Path) -> None:
    outcomes = run_all(corpus_env, tmp_path / "cases")
    bad = [o.problems() for o in outcomes if not o.ok]
    assert not bad, f"{len(bad)} of {len(outcomes)} cases misbehaved:\n" + "\n".join(bad)
    page = render(outcomes)
    assert DOC.read_text() == page, "docs/reliability.md is out of date: run PYTHONPATH=. python -m tests.reliability.report"
