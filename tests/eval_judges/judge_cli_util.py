"""Subprocess helpers for the eval judge tests (a uniquely named module: several test folders have a conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # one torch thread per subprocess: under pytest -n 2 on two cores more threads only spin
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llmguard", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
