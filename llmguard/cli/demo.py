"""``llmguard demo``: build or reuse the testbed, run every available verb on it, print one table."""

from __future__ import annotations

from typing import Annotated

import typer

from llmguard.cli.demo_runner import DemoOptions
from llmguard.cli.derive import JSON_FLAG, Extra, verb_command
from llmguard.cli.output import emit_json, info, stdout, warn


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


_LIST: Extra = (Annotated[bool, typer.Option("--list", help="List the registered steps and exit.")], False)


def demo_command(options: DemoOptions, *, list_steps: bool = False, json_output: bool = False) -> None:
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

    progress = make_progress()
    try:
        result = run_demo(seed=options.seed, testbed_dir=options.testbed, work=options.out, device=options.device, only=options.only,
                          progress=progress)
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
    verb_command(app, "demo", DemoOptions, panel="Top level", extra={"list_steps": _LIST, "json_output": JSON_FLAG})(demo_command)
