"""``llmguard watermark detect``: calibrated watermark detection on texts (tokenizer only, no weights)."""

from __future__ import annotations

import math
import os
from typing import Annotated, Any

import typer

from llmguard.cli.derive import Extra, verb_command
from llmguard.cli.options import PANEL_OUTPUT
from llmguard.watermark.options import DetectOptions

_JSON: Extra = (Annotated[bool, typer.Option("--json", help="One JSON document on stdout: {records: [one per text], aggregate}.",
                                              rich_help_panel=PANEL_OUTPUT)], False)
_JSONL: Extra = (Annotated[bool, typer.Option("--jsonl", help="JSONL on stdout, streamable: one record per text, then the corpus record.",
                                               rich_help_panel=PANEL_OUTPUT)], False)
_SHOW: Extra = (Annotated[bool, typer.Option("--show", help="Colour tokens green/red (stdout, or stderr with --json/--jsonl).",
                                              rich_help_panel=PANEL_OUTPUT)], False)


def register(app: typer.Typer) -> None:
    verb_command(app, "detect", DetectOptions, panel="Verbs", extra={"json_out": _JSON, "jsonl_out": _JSONL, "show": _SHOW})(detect_command)


def detect_command(options: DetectOptions, *, json_out: bool = False, jsonl_out: bool = False, show: bool = False) -> None:
    """Detect KGW-family and Unigram watermarks: z, exact p (log space), green counts, per text and per corpus."""
    from llmguard.cli.output import emit_json, emit_jsonl, info, stderr, stdout, warn
    from llmguard.errors import UsageError

    if json_out and jsonl_out:
        raise UsageError("--json and --jsonl: choose one (one document, or one record per line)")
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.detect import detect

    progress = make_progress()
    try:
        run = detect(options, progress, on_warning=warn)
    finally:
        progress.close()
    machine = json_out or jsonl_out
    if json_out:
        emit_json({"config": run.config, "records": run.records, "aggregate": run.aggregate})
    elif jsonl_out:
        for r in run.records:
            emit_jsonl(r)
        if run.aggregate is not None:
            emit_jsonl({"aggregate": run.aggregate})
    else:
        _print_human(run.records, run.aggregate, run.config, stdout)
    if show:
        _show_tokens(run, stderr if machine else stdout)
    if options.html is not None:
        run.write_html(options.html)
        info(f"wrote {options.html}")
    run.gate()


def _show_tokens(run: Any, console: Any) -> None:
    from llmguard.watermark.view import rich_text

    for r, t, sc in zip(run.records, run.tokens, run.scores):
        console.print(f"[bold]{r['where']}[/bold]  z={r['z']:.2f}  log10 p={r['log10_p']:.2f}", highlight=False)
        plain = console.no_color or console.color_system is None or os.environ.get("NO_COLOR") is not None
        console.print(rich_text(t, sc, run.tokenizer, plain))


def _num(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _print_human(records, agg, config, console) -> None:
    from rich.table import Table

    table = Table(title=None, show_edge=False)
    # the text column folds instead of truncating (file:line must stay readable)
    table.add_column("text", justify="left", overflow="fold")
    for col, just in ( ("tokens", "right"), ("scored", "right"), ("green", "right"),
                      ("green frac", "right"), ("z", "right"), ("log10 p", "right"), ("watermarked", "left")):
        table.add_column(col, justify=just)
    for r in records:
        table.add_row(
            str(r["where"]), str(r["num_tokens"]), str(r["num_tokens_scored"]), str(r["num_green_tokens"]),
            _num(r["green_fraction"], 3), _num(r["z"]), _num(r["log10_p"]), "yes" if r["prediction"] else "no",
        )
    console.print(table)
    thr = config["threshold"]
    rule = f"p < {thr['fpr']}" if "fpr" in thr else f"z > {thr['z']}"
    console.print(
        f"{config['scheme']}/{config['profile']} seeding={config['seeding']} γ={config['gamma']} key={config['key']} "
        f"h={config['context_width']} vocab={config['vocab_size']} ({config['vocab_source']}) dedup={config['dedup']} "
        f"p={config['p_method']} watermarked if {rule}",
        highlight=False,
    )
    if agg:
        console.print(
            f"corpus: {agg.get('num_texts', 0)} texts, median z {_num(agg.get('median_z', math.nan))}, "
            f"median log10 p {_num(agg.get('median_log10_p', math.nan))}, mean -log10 p "
            f"{_num(agg.get('mean_neg_log10_p', math.nan))}",
            highlight=False,
        )
        if "pooled" in agg:
            p = agg["pooled"]
            console.print(
                f"pooled ({p['dedup']} tape, {p['excluded_prompt_windows']} prompt-window tokens excluded): "
                f"{p['num_green_tokens']}/{p['num_tokens_scored']} green, z {_num(p['z'])}, log10 p {_num(p['log10_p'])} "
                f"→ {'WATERMARKED' if agg['prediction'] else 'not watermarked'}",
                highlight=False,
            )
        if "groups" in agg:
            g = agg["groups"]
            console.print(
                f"groups of {g['group_tokens']} tokens: {g['num_groups']}, median z {_num(g['median_z'])}, "
                f"median log10 p {_num(g['median_log10_p'])}",
                highlight=False,
            )
