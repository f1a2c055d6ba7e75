"""docs/architectures.md lists exactly the tested matrix, with each variant's real model class."""

from __future__ import annotations

from pathlib import Path

import zoo
from llmguard.io.architecture import Architecture

DOC = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"


def _matrix_rows() -> dict[str, list[str]]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- architecture-matrix"))
    rows = {}
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_matrix_table_is_the_tested_matrix():
    rows = _matrix_rows()
    assert list(rows) == list(zoo.VARIANTS)
    for name, cells in rows.items():
        assert cells[1] == Architecture(zoo.VARIANTS[name].config()).class_name, name
        assert cells[3:] == ["✓"] * 7, name


def test_every_variant_has_an_adapter_behind_its_lora_and_safelora_cells():
    assert {variant for variant, _ in zoo.ADAPTERS.values()} == set(zoo.VARIANTS)
