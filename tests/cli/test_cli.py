"""CLI conventions: help, light imports, python -m, completions kept current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_groups_and_verbs() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("realign", "inspect", "diff", "Exit codes"):
        assert word in result.stdout
    realign = run_cli("realign", "--help")
    assert "resta" in realign.stdout


def test_version() -> None:
    from llmguard import __version__

    assert run_cli("--version").stdout.strip() == f"llmguard {__version__}"


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys, llmguard.cli; heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unknown_command_is_usage_error() -> None:
    assert run_cli("frobnicate").returncode == 2


def test_completions_are_current() -> None:
    from llmguard.cli.completions import render

    for shell in ("bash", "zsh", "fish"):
        shipped = (ROOT / "completions" / f"llmguard.{shell}").read_text()
        assert shipped == render(shell), f"completions/llmguard.{shell} is stale: run `python -m llmguard.cli.completions`"


def test_root_flags_are_accepted_after_the_verb(tmp_path: Path) -> None:
    from llmguard.cli.global_flags import hoist_root_flags

    import click
    import typer.main

    from llmguard.cli.app import app

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    assert hoist_root_flags(group, ctx, ["realign", "resta", "-f", "x", "-q", "-vv"]) == ["-q", "-vv", "realign", "resta", "-f", "x"]
    # an option's value that looks like a root flag stays where it is; so does everything after --
    assert hoist_root_flags(group, ctx, ["watermark", "detect", "--text-field", "-q", "--", "-v"]) == [
        "watermark", "detect", "--text-field", "-q", "--", "-v"]
    missing = tmp_path / "missing"
    quiet = run_cli("inspect", missing, "-q")
    verbose = run_cli("inspect", missing, "-v")
    assert quiet.returncode == 3 and verbose.returncode == 3, (quiet.stderr, verbose.stderr)
    assert "Traceback" in verbose.stderr and "Traceback" not in quiet.stderr
