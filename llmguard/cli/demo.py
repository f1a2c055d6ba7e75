"""``llmguard demo``: build or reuse the testbed, run every available verb on it, print one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmguard.cli.options import PANEL_OUTPUT, JsonOpt
from llmguard.cli.output import emit_json, info, reports_errors, stdout, warn


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


@reports_errors
def demo_command(
    seed: Annotated[int, typer.Option("--seed", help="Testbed seed.")] = 0,
    testbed: Annotated[Optional[Path], typer.Option("--testbed", help="Testbed directory (default: the cache; built if missing).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where the demo writes its artefacts (default: $LLMGUARD_CACHE/demo/seed<N>).", rich_help_panel=PANEL_OUTPUT)] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", help="Comma-separated subset of steps to run (default: all available).")] = None,
    list_steps: Annotated[bool, typer.Option("--list", help="List the registered steps and exit.")] = False,
    device: Annotated[str, typer.Option("--device", envvar="LLMGUARD_DEVICE", help="Device for the verbs: cpu, cuda, auto.")] = "cpu",
    json_output: JsonOpt = False,
) -> None:
    """Build the testbed (once, cached) and run the verbs end to end: one before/after table.

    Example: llmguard demo
    """
    from llmguard.cli.demo_runner import load_steps, run_demo

    if list_steps:
        for name, step in load_steps().items():
            available = step.available is None or step.available()
            stdout.print(f"{name:24s} {step.description}{'' if available else '  (verb not available)'}")
        return
    from llmguard.cli.progress import make_progress

    only = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
    progress = make_progress()
    try:
        result = run_demo(seed=seed, testbed_dir=testbed, work=out, device=device, only=only, progress=progress)
    finally:
        progress.close()
    if json_output:
        emit_json(result.to_dict())
    else:
        from rich.table import Table

        table = Table(title="llmguard demo: before/after on the testbed (held-out test split)", title_justify="left")
        for col in ("step", "model", "harmful", "refusal", "task", "task acc", "watermark z", "judge agree", "s"):
            table.add_column(col, justify="left" if col in ("step", "model", "task") else "right",
                             no_wrap=col not in ("step", "model"))
        for r in result.rows:
            table.add_row(r.step, r.model if r.ok else f"[red]{r.model}", _pct(r.harmful_rate), _pct(r.refusal_rate),
                          r.task or "-", _pct(r.task_accuracy), _num(r.watermark_z), _pct(r.judge_agreement),
                          f"{r.seconds:.0f}" if r.seconds is not None else "-")
        # piped output (CI logs, files) gets a wide table instead of Rich's 80-column default
        if stdout.is_terminal:
            stdout.print(table)
        else:
            from rich.console import Console

            Console(highlight=False, width=max(stdout.width, 160)).print(table)
        for r in result.rows:
            if not r.ok:
                stdout.print(f"[red]failed[/red] {r.step}: {r.note}")
        for name, why in result.skipped.items():
            stdout.print(f"skipped {name}: {why}")
        stdout.print(f"testbed: {result.testbed_root}")
        stdout.print(f"demo artefacts: {result.work}")
        info(f"demo finished in {result.seconds:.0f} s")
    if not result.ok:
        warn("some demo steps failed (see the table)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo", rich_help_panel="Top level")(demo_command)
