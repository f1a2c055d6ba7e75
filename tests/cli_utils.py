"""Run the installed ``llmguard`` program in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


#: set to a file path to append one line per CLI run (seconds, exit code, test, arguments): where the suite's time goes
CLI_LOG = os.environ.get("LLMGUARD_TEST_CLI_LOG")


def run_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    cmd: Sequence[str] = [sys.executable, "-m", "llmguard", *map(str, args)]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, input=input)
    if CLI_LOG:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(CLI_LOG, "a", encoding="utf-8") as log:
            log.write(f"{time.perf_counter() - t0:.2f}\t{result.returncode}\t{test}\t{' '.join(map(str, args))[:200]}\n")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit ``code`` and one ``error:`` message containing ``needles``, which Rich may have wrapped."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    text = " ".join(line.strip() for line in result.stderr.strip().splitlines())
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in text, result.stderr
    for needle in needles:
        assert needle in text, (needle, text)


def no_partial_output(out: Path) -> bool:
    """Neither OUT nor a temporary sibling of it exists."""
    return not out.exists() and not any(p.name.startswith(f".{out.name}.llmguard-tmp") for p in out.parent.iterdir())
