"""``llmguard eval ace-m3``: ACE-M3 branch judges + Conclusion (merge) judge on image QA."""

from __future__ import annotations

from typing import Any

import typer

from llmguard.cli.derive import verb_command
from llmguard.cli.eval.judge_flags import JUDGE_JSON_FLAG
from llmguard.cli.output import emit_json, fail, info, stdout, warn
from llmguard.eval.judge_options import EvalAceM3Options

HELP = ("Judge answers to medical image questions ACE-M3 style: branch judges write criterion analyses, "
        "a Conclusion judge merges them into the final score (experimental preset: the paper's prompts are unknown).")

EXIT_HELP = (
    "Exit codes: 0 every record judged and parsed (or within --max-unparsed); 1 too many judge outputs did not "
    "parse; 2 usage error; 3 some items could not be judged (missing/undecodable image, missing field, judge "
    "that is not an image-text model) — recorded per item, the rest is judged; 4 resource failure; "
    "10 --fail-below tripped."
)


def register(app: typer.Typer) -> None:
    verb_command(app, "ace-m3", EvalAceM3Options, extra={"json_out": JUDGE_JSON_FLAG}, help=HELP, epilog=EXIT_HELP)(ace_m3_command)


def ace_m3_command(options: EvalAceM3Options, *, json_out: bool = False) -> None:
    """Judge ITEMS (image, question, answer [, reference]) and write branch and conclusion records to OUTPUT."""
    from llmguard.cli.progress import make_progress
    from llmguard.eval.ace_m3 import AceM3Protocol
    from llmguard.eval.judge_run import run_judges

    run = run_judges(AceM3Protocol.prepare(options), make_progress(), info=info, warn=warn)
    if json_out:
        emit_json(run.summary)
    else:
        _print(run.summary)
    if run.exit_code:
        raise fail(run.message or "failures", run.exit_code)


def _print(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"ACE-M3 (merge {summary['merge']}, scale {summary['scale'][0]:g}-{summary['scale'][1]:g})")
    for col in ("stage:criterion", "parsed", "mean", "sd"):
        table.add_column(col)
    for name, c in summary["criteria"].items():
        table.add_row(name, f"{c['parsed']}/{c['records']}", "-" if c["mean"] is None else f"{c['mean']:.3f}",
                      "-" if c["std"] is None else f"{c['std']:.3f}")
    stdout.print(table)
    stdout.print("records: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items())))
    for j in summary["run"]["judges"]:
        if j.get("items_per_second"):
            stdout.print(f"{j['stage']}: {j['generated']} generated, {j['cached']} cached, {j['items_per_second']} outputs/s")
        if j.get("load_error"):
            stdout.print(f"{j['stage']}: judge {j['path']} could not be used: {j['load_error']}")
