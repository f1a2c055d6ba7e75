"""Shared fixtures for the whole suite.

``testbed``: the testbed (tiny real Llama checkpoints + data), built once into the shared cache
(``$LLMGUARD_CACHE``, default ``~/.cache/llmguard``) under a file lock, so parallel pytest
workers (``-n 2``) and later runs reuse one build.
"""

from __future__ import annotations

import os

import pytest

# Under pytest-xdist every worker (and every CLI subprocess it starts) would otherwise run torch
# with one OpenMP thread per core: two workers on two cores then oversubscribe, and OpenMP's
# spin-waiting made the testbed-heavy tests 3-4x slower (326 s -> 91 s for the NLSR, build and
# eval-safety files with `-n 2`). Give each worker its share of the cores instead.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = str(max(1, (os.cpu_count() or 1) // max(1, _workers)))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)


@pytest.fixture(scope="session")
def testbed():
    from llmguard.testbed import build

    return build(seed=0)
