"""``llmguard watermark scrub|spoof|distill``: the CDG-KD attacks (flags derived from the library's options)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from llmguard.cli.options import PANEL_OUTPUT
from llmguard.cli.options_command import build, options_command
from llmguard.cli.output import reports_errors
from llmguard.watermark.attack import AttackOptions, ContrastiveOptions
from llmguard.watermark.closed_loop import ClosedLoopOptions
from llmguard.watermark.distill import DistillOptions, TrainOptions

_JSON = inspect.Parameter(
    "json_output", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.",
                                            rich_help_panel=PANEL_OUTPUT)])


def _print_models(result: Any) -> None:
    from rich.table import Table

    from llmguard.cli.output import stdout

    table = Table(title=f"watermark {result.mode}: closed loop (held-out generations)")
    for col in ("model", "median z", "median p", "median p (2-sided)", "mean -log10 p", "mean -log10 p (2-sided)",
                "perplexity", "ppl / student"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in result.models.items():
        ppl = "-" if m.perplexity is None else f"{m.perplexity:.2f}"
        rel = "-" if m.perplexity_vs_student is None else f"{m.perplexity_vs_student:.3f}"
        table.add_row(name, f"{m.median_z:.2f}", f"{m.median_p:.2e}", f"{m.median_p_two_sided:.2e}",
                      f"{m.mean_neg_log10_p:.2f}", f"{m.mean_neg_log10_p_two_sided:.2f}", ppl, rel)
    stdout.print(table)


def _run(mode: str, values: dict[str, Any]) -> None:
    from llmguard.cli.output import emit_json, info, warn
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.attack import run_attack

    json_output = values.pop("json_output")
    options = AttackOptions(mode, build(ContrastiveOptions, values), build(TrainOptions, values),
                            build(ClosedLoopOptions, values))
    options.validate()
    progress = make_progress()
    try:
        result = run_attack(options, progress)
    finally:
        progress.close()
    for w in result.warnings:
        warn(w)
    info(f"wrote {result.records} record(s) to {result.data}"
         + (f" ({result.resumed_records} from the resumed run)" if result.resumed_records else "")
         + f"; {result.tokens_per_second:.0f} contrastive tokens/s")
    if result.train is not None:
        info(f"distilled {result.train.output} in {result.train.steps} steps ({result.train.seconds:.1f}s)")
    if json_output:
        emit_json(result.to_dict())
    elif result.models:
        _print_models(result)


@options_command(ContrastiveOptions, TrainOptions, ClosedLoopOptions, extra=[_JSON])
def scrub(values: dict[str, Any]) -> None:
    """Scrub an inherited watermark: contrastive data s = ℓ_R − β(ℓ_S − ℓ_R), distil a fresh student, detect."""
    _run("scrub", values)


@options_command(ContrastiveOptions, TrainOptions, ClosedLoopOptions, extra=[_JSON])
def spoof(values: dict[str, Any]) -> None:
    """Spoof (amplify) an inherited watermark: s = ℓ_S + β(ℓ_S − ℓ_R), distil a fresh student, detect."""
    _run("spoof", values)


@options_command(DistillOptions, extra=[_JSON])
def distill(values: dict[str, Any]) -> None:
    """Distil a student on an SFT dataset (transformers Trainer; CDG-KD's recipe by default)."""
    from llmguard.cli.output import emit_json, info
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.distill import distill as run_distill

    json_output = values.pop("json_output")
    options = build(DistillOptions, values)
    options.validate()
    progress = make_progress()
    try:
        result = run_distill(options, progress)
    finally:
        progress.close()
    info(f"distilled {result.records} record(s) into {options.output} in {result.train.steps} steps "
         f"({result.train.seconds:.1f}s, final loss {result.train.final_loss})")
    if json_output:
        emit_json(result.to_dict())
    else:
        from llmguard.cli.output import stdout

        stdout.print(f"{options.output}\t{result.train.kind}\t{result.train.steps} steps\tloss {result.train.final_loss}")


def register(app: typer.Typer) -> None:
    app.command("scrub", rich_help_panel="Verbs")(reports_errors(scrub))
    app.command("spoof", rich_help_panel="Verbs")(reports_errors(spoof))
    app.command("distill", rich_help_panel="Verbs")(reports_errors(distill))
