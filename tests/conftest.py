"""Shared fixtures for the whole suite.

``testbed``: the testbed (tiny real Llama checkpoints + data), built once into the shared cache
(``$LLMGUARD_CACHE``, default ``~/.cache/llmguard``) under a file lock, so parallel pytest
workers (``-n 2``) and later runs reuse one build.

Scheduling: a fresh cache means a build of several minutes. Left to the first test that needs it,
the build held one worker while the other, reaching a testbed test of its own, waited idle on the
lock (186-248 s of a 13-18 minute suite on 2 cores). So the tests that need the testbed (the
``slow`` ones and every user of the ``testbed`` fixture) run last, and one process starts the
build in the background as soon as collection is done: both workers run the other tests meanwhile.
This removed the lock wait but not the CPU work: on a fresh 2-core clone the suite took 786 s
against 772 s before (CHANGELOG.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

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


def _needs_testbed(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None or "testbed" in getattr(item, "fixturenames", ())


_background: list[subprocess.Popen] = []


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Testbed tests last (a stable sort: the same order on every xdist worker), and the seed-0
    build started in the background by one process (worker gw0, or the only one)."""
    items.sort(key=_needs_testbed)
    if not any("testbed" in getattr(i, "fixturenames", ()) for i in items) or os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return
    code = "from llmguard.testbed import build; build(seed=0)"  # the file lock makes the fixture wait for it, then reuse it
    _background.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}))


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run stopped early (``-x``, Ctrl-C) does not leave a build behind; its half-built directory
    is rebuilt on next use."""
    for proc in _background:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
