"""``llmguard watermark detect``: calibrated watermark detection on texts (tokenizer only, no weights)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmguard.cli.options import PANEL_INPUT, PANEL_OUTPUT, PANEL_PERF
from llmguard.cli.output import reports_errors
from llmguard.cli.watermark.common import (
    ContextWidthOpt,
    DeltaOpt,
    GammaOpt,
    KeyOpt,
    ProfileOpt,
    RngDeviceOpt,
    SchemeOpt,
    SeedingOpt,
    check_combo,
    vocab_opt,
)

PANEL_STATS = "Statistics"


def register(app: typer.Typer) -> None:
    app.command("detect", rich_help_panel="Verbs")(detect)


@reports_errors
def detect(
    source: Annotated[
        str, typer.Argument(metavar="[FILE|-]", help="Plain text, JSONL or a JSON array; - for stdin.")
    ] = "-",
    tokenizer: Annotated[
        Optional[str],
        typer.Option("--tokenizer", "-t", help="Tokenizer directory, tokenizer.json, or hub id.", rich_help_panel=PANEL_INPUT),
    ] = None,
    text_field: Annotated[
        Optional[str], typer.Option("--text-field", help="JSON field with the text (default: text).", rich_help_panel=PANEL_INPUT)
    ] = None,
    prompt_field: Annotated[
        Optional[str],
        typer.Option(
            "--prompt-field",
            help="JSON field with the prompt: stripped from the text when it starts with it; its windows are "
            "excluded from the pooled corpus test.",
            rich_help_panel=PANEL_INPUT,
        ),
    ] = None,
    ids_field: Annotated[
        Optional[str],
        typer.Option("--ids-field", help="JSON field with token ids (instead of text; no tokenizer needed).", rich_help_panel=PANEL_INPUT),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip malformed, empty or too-short records (warned) instead of failing.", rich_help_panel=PANEL_INPUT)
    ] = False,
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Model directory whose config.json gives the model vocab size (no weights read).", rich_help_panel=PANEL_INPUT),
    ] = None,
    scheme: SchemeOpt = "kgw",
    profile: ProfileOpt = None,
    seeding: SeedingOpt = None,
    gamma: GammaOpt = None,
    delta: DeltaOpt = None,
    key: KeyOpt = None,
    context_width: ContextWidthOpt = None,
    vocab_size: Annotated[str, vocab_opt("auto")] = "auto",
    rng_device: RngDeviceOpt = "cpu",
    dedup: Annotated[
        Optional[str],
        typer.Option(
            "--dedup",
            help="Repeated units: none, ngram (unique n-grams, reference default), window (unique context), "
            "window+token. Default: the profile's reference behaviour.",
            rich_help_panel=PANEL_STATS,
        ),
    ] = None,
    pvalue: Annotated[
        str,
        typer.Option(
            "--pvalue",
            help="normal (from z, as the references), binomial (exact tail), or hf-approx (transformers <= 5.20's "
            "approximation, for reproducing old reports; not calibrated).",
            rich_help_panel=PANEL_STATS,
        ),
    ] = "normal",
    z_threshold: Annotated[
        float, typer.Option("--z-threshold", help="Predict watermarked when z exceeds this.", rich_help_panel=PANEL_STATS)
    ] = 4.0,
    fpr: Annotated[
        Optional[float],
        typer.Option("--fpr", help="Predict watermarked when p < FPR (overrides --z-threshold).", rich_help_panel=PANEL_STATS),
    ] = None,
    aggregate: Annotated[
        bool,
        typer.Option(
            "--aggregate",
            help="Corpus results: median z/p, mean -log10 p, and a pooled test with a global dedup tape and "
            "prompt-window exclusion (radioactivity).",
            rich_help_panel=PANEL_STATS,
        ),
    ] = False,
    group_tokens: Annotated[
        Optional[int],
        typer.Option("--group-tokens", help="Also test fixed groups of N concatenated tokens (Pan et al.: 10000).", rich_help_panel=PANEL_STATS),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="JSONL on stdout: one record per text, then the corpus record.", rich_help_panel=PANEL_OUTPUT)
    ] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Colour tokens green/red (stdout, or stderr with --json).", rich_help_panel=PANEL_OUTPUT)
    ] = False,
    html_path: Annotated[
        Optional[Path], typer.Option("--html", help="Write a self-contained HTML page with the token view and stats.", rich_help_panel=PANEL_OUTPUT)
    ] = None,
    fail_on_detect: Annotated[
        bool,
        typer.Option(
            "--fail-on-detect",
            help="Exit 10 when any text (with --aggregate: the corpus) is predicted watermarked.",
            rich_help_panel=PANEL_OUTPUT,
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", help="Processes for permutation green lists (0 = all cores).", rich_help_panel=PANEL_PERF)
    ] = 0,
) -> None:
    """Detect KGW-family and Unigram watermarks: z, exact p (log space), green counts, per text and per corpus."""
    from llmguard.errors import GateTripped, UsageError
    from llmguard.watermark.stats import DEDUP_MODES

    check_combo(scheme, profile)
    if dedup is not None and dedup not in DEDUP_MODES:
        raise UsageError(f"--dedup must be one of {', '.join(DEDUP_MODES)}, got {dedup!r}")
    if pvalue not in ("normal", "binomial", "hf-approx"):
        raise UsageError(f"--pvalue must be normal, binomial or hf-approx, got {pvalue!r}")
    if fpr is not None and not 0.0 < fpr < 1.0:
        raise UsageError(f"--fpr must be in (0, 1), got {fpr}")
    if group_tokens is not None and group_tokens < 1:
        raise UsageError("--group-tokens must be positive")
    if ids_field is None and tokenizer is None:
        raise UsageError("--tokenizer is required (or give token ids with --ids-field)")
    if text_field is not None and ids_field is not None:
        raise UsageError("--text-field and --ids-field exclude each other")
    if html_path is not None and html_path.exists() and html_path.is_dir():
        raise UsageError(f"--html {html_path}: is a directory")

    from llmguard.cli.output import emit_jsonl, info, stderr, stdout, warn
    from llmguard.cli.progress import make_progress
    from llmguard.errors import InvalidInputError
    from llmguard.watermark.data import read_records
    from llmguard.watermark.detect import (
        Threshold,
        Tokenized,
        corpus_summary,
        group_tests,
        load_tokenizer,
        pooled_test,
        prompt_windows,
        resolve_vocab_size,
        score_token_lists,
        tokenize_text,
    )
    from llmguard.watermark.schemes import SchemeParams, build_scheme

    threshold = Threshold(z=z_threshold, fpr=fpr)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    if vocab_size == "auto":
        # transformers builds its green lists from the model's vocab_size; the others from len(tokenizer)
        from llmguard.watermark.schemes import DEFAULT_PROFILE

        prof = (profile or DEFAULT_PROFILE[scheme.lower()]).lower()
        vocab_size = "model" if (prof == "hf" and model) else "tokenizer"
    if vocab_size == "tokenizer" and tok is None:
        raise UsageError("--vocab-size tokenizer needs --tokenizer; give --vocab-size N with --ids-field")
    vsize, vsource, vwarn = resolve_vocab_size(vocab_size, tok, model)
    for w in vwarn:
        warn(w)
    nworkers = workers if workers > 0 else (os.cpu_count() or 1)
    sch = build_scheme(
        scheme,
        profile,
        SchemeParams(
            vocab_size=vsize, gamma=gamma, delta=delta, key=key, seeding=seeding,
            context_width=context_width, rng_device=rng_device, workers=nworkers,
        ),
    )
    dedup_mode = dedup or sch.default_dedup
    read = read_records(source, text_field=text_field, prompt_field=prompt_field, ids_field=ids_field, skip_bad=skip_bad)
    for msg in read.skipped:
        warn(f"skipped {msg}")

    tokens: list[Tokenized] = []
    prompts: list[list[int] | None] = []
    kept = []
    need = sch.prefix_len + 1
    for rec in read.records:
        if rec.ids is not None:
            ids = rec.ids
            stripped = False
            if rec.prompt_ids and ids[: len(rec.prompt_ids)] == rec.prompt_ids:
                ids = ids[len(rec.prompt_ids) :]
                stripped = True
            t = Tokenized(ids, None, None, stripped)
            p_ids = rec.prompt_ids
        else:
            t = tokenize_text(tok, rec.text, rec.prompt)
            p_ids = tokenize_text(tok, rec.prompt).ids if rec.prompt else None
        bad_id = next((i for i in t.ids if i >= vsize), None)
        problem = None
        if len(t.ids) < need:
            problem = (
                f"{rec.where}: {len(t.ids)} token(s) after prompt stripping, fewer than the {need} needed "
                f"(context width {sch.prefix_len} + 1)"
            )
        elif bad_id is not None:
            problem = f"{rec.where}: token id {bad_id} is outside the vocabulary of size {vsize} (check --vocab-size)"
        if problem:
            if not skip_bad:
                raise InvalidInputError(problem)
            warn(f"skipped {problem}")
            continue
        tokens.append(t)
        prompts.append(p_ids)
        kept.append(rec)
    if not tokens:
        raise InvalidInputError(f"{source}: no text long enough to score")

    progress = make_progress()
    try:
        scores = score_token_lists(sch, [t.ids for t in tokens], dedup_mode, pvalue, progress)
    finally:
        progress.close()
    config = sch.config()
    config.update(vocab_source=vsource, dedup=dedup_mode, p_method=pvalue, threshold=threshold.as_dict())

    records = []
    for rec, t, sc in zip(kept, tokens, scores):
        r = {
            "index": rec.index,
            "where": rec.where,
            **rec.meta,
            "num_tokens": len(t.ids),
            **sc.result.as_dict(),
            "prediction": threshold.predict(sc.result),
            "prompt_stripped": t.prompt_stripped,
            "config": config,
        }
        records.append(r)

    agg = None
    if aggregate or group_tokens:
        agg = {"num_texts": len(records)}
        agg.update(corpus_summary(scores))
        if aggregate:
            excl = prompt_windows(sch, prompts) if prompt_field else None
            pooled_dedup = dedup_mode if dedup is not None else "window+token"
            agg["pooled"] = pooled_test(sch, [t.ids for t in tokens], scores, pooled_dedup, pvalue, excl)
            from llmguard.watermark.stats import TestResult

            pr = agg["pooled"]
            agg["prediction"] = threshold.predict(
                TestResult(pr["num_tokens_scored"], pr["num_green_tokens"], pr["green_fraction"], pr["z"],
                           pr["log10_p"] * math.log(10), pvalue)
            )
        if group_tokens:
            agg["groups"] = group_tests(sch, [t.ids for t in tokens], group_tokens, dedup_mode, pvalue)
        agg["config"] = config

    if json_out:
        for r in records:
            emit_jsonl(r)
        if agg is not None:
            emit_jsonl({"aggregate": agg})
    else:
        _print_human(records, agg, config, stdout)

    if show:
        console = stderr if json_out else stdout
        from llmguard.watermark.view import rich_text

        for r, t, sc in zip(records, tokens, scores):
            console.print(f"[bold]{r['where']}[/bold]  z={r['z']:.2f}  log10 p={r['log10_p']:.2f}", highlight=False)
            plain = console.no_color or console.color_system is None or os.environ.get("NO_COLOR") is not None
            console.print(rich_text(t, sc, tok, plain))
    if html_path is not None:
        from llmguard.watermark.view import html_page

        html_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = html_path.with_name(f".{html_path.name}.tmp")
        tmp.write_text(html_page(records, tokens, scores, config, tok, agg), encoding="utf-8")
        tmp.replace(html_path)
        info(f"wrote {html_path}")

    if fail_on_detect:
        if agg is not None and "prediction" in agg:
            if agg["prediction"]:
                raise GateTripped(f"watermark detected in the corpus (pooled z={agg['pooled']['z']:.2f})")
        else:
            hits = [r for r in records if r["prediction"]]
            if hits:
                raise GateTripped(
                    f"watermark detected in {len(hits)} of {len(records)} text(s) (first: {hits[0]['where']}, "
                    f"z={hits[0]['z']:.2f})"
                )


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
