"""``llmguard eval safety``: harmful rate, refusal rate and task accuracy of a model."""

from __future__ import annotations

import typer

from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.cli.output import emit_json, info, stdout, warn
from llmguard.eval.safety_options import EvalSafetyOptions


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def safety_command(options: EvalSafetyOptions, *, json_output: bool = False) -> None:
    """Harmful rate and refusal rate on harmful prompts (per category, with counts), plus task accuracy.

    Example: llmguard eval safety --model base --adapter finetuned-lora --prompts harmful_test.jsonl
    --task sst2 --task-data sst2_test.jsonl --fail-above 0.2
    """
    from llmguard.cli.progress import make_progress
    from llmguard.eval.safety import run_safety

    progress = make_progress()
    try:
        run = run_safety(options, progress, on_warning=warn)
    finally:
        progress.close()
    if options.records is not None:
        info(f"wrote {len(run.report.records)} records to {options.records}")
    if json_output:
        emit_json(run.document)
    else:
        _print_table(run.report)
    run.check_gate()


def _print_table(report) -> None:  # noqa: ANN001
    from rich.table import Table

    title = report.model + (f" + {report.adapter}" if report.adapter else "") + f"  (judge: {report.judge})"
    if report.n:
        table = Table(title=title, title_justify="left")
        for col in ("category", "n", "harmful", "harmful rate", "refusals", "refusal rate", "other"):
            table.add_column(col, justify="left" if col == "category" else "right")
        for cat, c in report.per_category.items():
            table.add_row(cat, str(c["n"]), str(c["harmful"]), _pct(c["harmful_rate"]), str(c["refusals"]),
                          _pct(c["refusal_rate"]), str(c["other"]))
        table.add_row("[bold]all", f"[bold]{report.n}", f"[bold]{report.harmful}", f"[bold]{_pct(report.harmful_rate)}",
                      f"[bold]{report.refusals}", f"[bold]{_pct(report.refusal_rate)}", f"[bold]{report.other}")
        stdout.print(table)
        if report.unparsed:
            stdout.print(f"judge outputs that did not parse: {report.unparsed} (counted as not harmful)")
    if report.task:
        t = report.task
        stdout.print(f"task {t['name']}: accuracy {_pct(t['accuracy'])} ({t['correct']}/{t['n']})")


def register(app: typer.Typer) -> None:
    verb_command(app, "safety", EvalSafetyOptions, panel="Safety", extra={"json_output": JSON_FLAG})(safety_command)
