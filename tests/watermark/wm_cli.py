"""In-process CLI runner for the watermark tests."""

from __future__ import annotations

# A few runs go through a real subprocess (end to end); error paths and option checks run the same
# Typer app in-process (same code, same exit codes and messages), which keeps the suite fast.


def invoke(*args, input=None):
    """Run ``llmguard ARGS`` in-process; returns a CompletedProcess-like object."""
    import subprocess

    from typer.testing import CliRunner

    from llmguard.cli.app import app

    res = CliRunner().invoke(app, [str(a) for a in args], input=input, env={"NO_COLOR": "1", "COLUMNS": "200"})
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)
