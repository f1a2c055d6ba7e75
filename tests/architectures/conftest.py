"""The architecture matrix, built once per session: for every variant of ``zoo.VARIANTS`` a base
(θ_U), an aligned (θ_A) and a fine-tuned (θ_F) full checkpoint, and real PEFT LoRA adapters on
the bases that exercise each family's peculiarities."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py
import zoo  # noqa: E402
from zoo import ADAPTERS, make_adapter  # noqa: E402

def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """Build ``name`` once for all pytest-xdist workers of this session (they share basetemp's parent)."""
    from filelock import FileLock

    worker_root = tmp_path_factory.getbasetemp()
    root = worker_root.parent if os.environ.get("PYTEST_XDIST_WORKER") else worker_root
    target = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (target / ".complete").is_file():
            if target.exists():
                shutil.rmtree(target)
            build(target)
            (target / ".complete").write_text("")
    return target


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    def build(root: Path) -> None:
        for name, variant in zoo.VARIANTS.items():
            zoo.family(variant, root / name)

    root = _shared_dir(tmp_path_factory, "architectures", build)
    return {name: {role: root / name / role for role in ("base", "aligned", "finetuned")} for name in zoo.VARIANTS}


@pytest.fixture(scope="session")
def adapters(matrix: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """adapter name → (adapter directory, its base)."""
    def build(root: Path) -> None:
        for i, (name, (variant, config)) in enumerate(ADAPTERS.items()):
            make_adapter(matrix[variant]["base"], root / name, seed=10 + i, **config)

    root = _shared_dir(tmp_path_factory, "architecture-adapters", build)
    return {name: (root / name, matrix[variant]["base"]) for name, (variant, _) in ADAPTERS.items()}
