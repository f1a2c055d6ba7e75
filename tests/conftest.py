"""Shared fixtures for the whole suite.

``testbed``: the testbed (tiny real Llama checkpoints + data), built once into the shared cache
(``$LLMGUARD_CACHE``, default ``~/.cache/llmguard``) under a file lock, so parallel pytest
workers (``-n 2``) and later runs reuse one build.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def testbed():
    from llmguard.testbed import build

    return build(seed=0)
