"""Run the installed ``llmguard`` program in a subprocess, as a user would (``run_cli``), or its
console-script app in this process (``run_cli_in_process``) for error paths and short calls."""

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
    _log(time.perf_counter() - t0, result.returncode, args)
    return result


def _log(seconds: float, code: int, args: tuple[object, ...], how: str = "") -> None:
    if CLI_LOG:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(CLI_LOG, "a", encoding="utf-8") as log:
            log.write(f"{seconds:.2f}\t{code}\t{test}\t{how}{' '.join(map(str, args))[:200]}\n")


def run_cli_in_process(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``llmguard ARGS`` through the console script's Typer app in this process, as ``run_cli``
    returns it (exit code, stdout, stderr): the same parsing, error reporting and exit codes
    (``llmguard.cli.demo_runner.run_in_process``, which the demo also uses).

    Why: a subprocess that imports torch and transformers costs 5–7 s of CPU on a 2-core CI box
    before the command starts, and most bad-input checks end a second later. Every verb keeps
    end-to-end tests through ``run_cli``; this is for the checks of error lines, exit codes and
    untouched outputs."""
    from llmguard.cli.demo_runner import run_in_process

    extra = {"NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    t0 = time.perf_counter()
    try:
        code, out, err = run_in_process([str(a) for a in args])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _log(time.perf_counter() - t0, code, args, "[in-process] ")
    return subprocess.CompletedProcess(["llmguard", *map(str, args)], code, out, err)


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
