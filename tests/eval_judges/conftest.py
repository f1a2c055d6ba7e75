"""Fixtures: the testbed's tiny HDC judge and tiny LLaVA (built once into the shared cache,
behind a file lock, so ``pytest -n 2`` builds them once), item and label files."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmguard.testbed import judge as tj


@pytest.fixture(scope="session")
def tiny_judge() -> Path:
    return tj.tiny_judge_path()


@pytest.fixture(scope="session")
def tiny_llava() -> Path:
    return tj.tiny_llava_path()


@pytest.fixture()
def hdc_data(tmp_path: Path) -> dict[str, Path]:
    items = tj.judge_items(16)
    return {
        "items": tj.write_items(items, tmp_path / "items.jsonl"),
        "labels": tj.write_labels(items, tmp_path / "labels.jsonl"),
        "cache": tmp_path / "gen.sqlite",
    }
