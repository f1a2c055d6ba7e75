"""``llmguard watermark scrub|spoof|distill``: the CDG-KD attacks (flags derived from the library's options)."""

from __future__ import annotations

from typing import Any

import typer

from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.watermark.attack_options import AttackOptions, DistillOptions, ScrubOptions, SpoofOptions


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


def _run(options: AttackOptions, json_output: bool) -> None:
    from llmguard.cli.output import emit_json, info, warn
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.attack import run_attack

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


def scrub(options: ScrubOptions, *, json_output: bool) -> None:
    """Scrub an inherited watermark: contrastive data s = ℓ_R − β(ℓ_S − ℓ_R), distil a fresh student, detect."""
    _run(options, json_output)


def spoof(options: SpoofOptions, *, json_output: bool) -> None:
    """Spoof (amplify) an inherited watermark: s = ℓ_S + β(ℓ_S − ℓ_R), distil a fresh student, detect."""
    _run(options, json_output)


def distill(options: DistillOptions, *, json_output: bool) -> None:
    """Distil a student on an SFT dataset (transformers Trainer; CDG-KD's recipe by default)."""
    from llmguard.cli.output import emit_json, info, stdout
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.distill import distill as run_distill

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
        stdout.print(f"{options.output}\t{result.train.kind}\t{result.train.steps} steps\tloss {result.train.final_loss}")


def register(group: typer.Typer) -> None:
    for name, options_cls, handler in (("scrub", ScrubOptions, scrub), ("spoof", SpoofOptions, spoof),
                                       ("distill", DistillOptions, distill)):
        verb_command(group, name, options_cls, panel="Verbs", extra={"json_output": JSON_FLAG})(handler)
