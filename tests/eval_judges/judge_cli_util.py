"""Subprocess helpers for the eval judge tests (a uniquely named module: several test folders have a conftest)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cli_utils
from cli_utils import run_cli_in_process  # noqa: F401 - re-exported for the judge tests


def run_cli(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # one torch thread per subprocess: under pytest -n 2 on two cores more threads only spin
    return cli_utils.run_cli(*args, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, timeout=timeout)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
