"""Tiny real checkpoints and adapters shared by the engine tests (built once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_llama, make_lora  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {
        "base": make_llama(root / "base", seed=0),
        "finetuned": make_llama(root / "finetuned", seed=1),
        "aligned": make_llama(root / "aligned", seed=2),
    }
    paths["lora_aligned"] = make_lora(paths["base"], root / "lora_aligned", seed=3)
    paths["lora_finetuned"] = make_lora(paths["base"], root / "lora_finetuned", seed=4, r=8, alpha=16, use_rslora=True)
    return paths
