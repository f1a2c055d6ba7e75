"""The corpus environment: the testbed's models read in place, small data files, the tiny judge."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import Env, write_env_data  # noqa: E402


@pytest.fixture(scope="session")
def corpus_env(testbed, tmp_path_factory: pytest.TempPathFactory) -> Env:
    from llmguard.testbed import judge as tj

    root = Path(testbed.root) if hasattr(testbed, "root") else Path(testbed)
    data = tmp_path_factory.mktemp("corpus-data")
    write_env_data(root, data)
    return Env(root, data, tj.tiny_judge_path(), tj.tiny_llava_path())
