"""``llmguard eval hdc``: HDCEval-style medical judging with three expert judges."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmguard.cli.eval import judge_options as jo
from llmguard.cli.options import PANEL_INPUT, PANEL_METHOD
from llmguard.cli.output import emit_json, fail, info, reports_errors, stdout, warn

EXIT_HELP = (
    "Exit codes: 0 every record judged and parsed (or the unparsed share is within --max-unparsed); "
    "1 too many judge outputs did not parse; 2 usage error; 3 some items could not be judged "
    "(missing field, judge that cannot be loaded or is not generative) — the other items are still judged "
    "and every failure is a record with 'parse_status' and 'error'; 4 resource failure (vllm missing, device); "
    "10 --fail-below tripped."
)


def register(app: typer.Typer) -> None:
    app.command(
        "hdc",
        help="Score medical answers with HDCEval's three expert judges (REL/PQR, COR/MKC, EXP), "
        "sub-aspects 0-5 with analyses, single or pairwise; JSONL in, JSONL out, resumable and cached.",
        epilog=EXIT_HELP,
    )(hdc)


@reports_errors
def hdc(
    items: jo.ItemsArg,
    output: jo.OutputOpt = Path("hdc-results.jsonl"),
    judge: jo.JudgeOpt = None,
    expert_pqr: Annotated[Optional[str], typer.Option("--expert-pqr", help="Judge for REL (Patient Question Relevance).", rich_help_panel=jo.PANEL_JUDGE)] = None,
    expert_mkc: Annotated[Optional[str], typer.Option("--expert-mkc", help="Judge for COR (Medical Knowledge Correctness).", rich_help_panel=jo.PANEL_JUDGE)] = None,
    expert_exp: Annotated[Optional[str], typer.Option("--expert-exp", help="Judge for EXP (Expression).", rich_help_panel=jo.PANEL_JUDGE)] = None,
    backend: jo.BackendOpt = "hf",
    load_in_4bit: jo.Load4Opt = False,
    load_in_8bit: jo.Load8Opt = False,
    trust_remote_code: jo.TrustOpt = False,
    pairwise: Annotated[bool, typer.Option("--pairwise", help="Judge two answers per item in one prompt (--answer-field and --answer-b-field).", rich_help_panel=PANEL_METHOD)] = False,
    swap: Annotated[bool, typer.Option("--swap", help="With --pairwise, judge both orders (A,B) and (B,A): swap consistency.", rich_help_panel=PANEL_METHOD)] = False,
    aspects: Annotated[Optional[str], typer.Option("--aspects", help="Comma list of aspects to judge (REL,COR,EXP or PQR,MKC,EXP); default all.", rich_help_panel=PANEL_METHOD)] = None,
    aggregate: Annotated[str, typer.Option("--aggregate", help="Sub-aspects -> aspect score: mean, sum, min or weights:CONT=2,COND=1,...", rich_help_panel=PANEL_METHOD)] = "mean",
    template: jo.TemplateOpt = None,
    prompt_format: jo.PromptFormatOpt = "auto",
    max_new_tokens: jo.MaxNewOpt = 512,
    retries: jo.RetriesOpt = 0,
    retry_temperature: jo.RetryTempOpt = 0.7,
    seed: jo.SeedOpt = 0,
    id_field: jo.IdFieldOpt = "id",
    question_field: jo.QuestionFieldOpt = "question",
    answer_field: jo.AnswerFieldOpt = "answer",
    answer_b_field: Annotated[str, typer.Option("--answer-b-field", help="Field holding the second answer (--pairwise).", rich_help_panel=PANEL_INPUT)] = "answer_b",
    reference_field: jo.ReferenceFieldOpt = "reference",
    no_reference: jo.NoReferenceOpt = False,
    group_field: jo.GroupFieldOpt = None,
    keep_field: jo.KeepFieldOpt = None,
    skip_bad: jo.SkipBadOpt = False,
    limit: jo.LimitOpt = None,
    device: jo.DeviceOpt = "auto",
    dtype: jo.DtypeOpt = "auto",
    batch_size: jo.BatchOpt = 8,
    cache: jo.CacheOpt = None,
    no_cache: jo.NoCacheOpt = False,
    resume: jo.ResumeOpt = False,
    force: jo.ForceOpt = False,
    json_out: jo.JsonOpt = False,
    max_unparsed: jo.MaxUnparsedOpt = 0.0,
    fail_below: jo.FailBelowOpt = None,
) -> None:
    """Judge ITEMS with the HDC experts and write one record per (item, aspect) to OUTPUT."""
    from llmguard.cli.progress import make_progress
    from llmguard.errors import UsageError
    from llmguard.eval import hdc as H
    from llmguard.eval.items import FieldMap, ResultsFile, read_jsonl, read_items
    from llmguard.eval.runner import Decoding
    from llmguard.eval.templating import load_templates

    t_start = time.perf_counter()
    if resume and force:
        raise UsageError("--resume and --force contradict each other")
    templates = load_templates("hdc", template)
    all_aspects = H.aspects_from_preset(templates)
    chosen = H.select_aspects(all_aspects, aspects.split(",") if aspects else None)
    agg = H.Aggregate.parse(aggregate, all_aspects)
    options = H.HdcOptions(mode="pairwise" if pairwise else "single", swap=swap, aggregate=agg,
                           use_reference=not no_reference)
    if swap and not pairwise:
        raise UsageError("--swap needs --pairwise")
    experts = {"REL": expert_pqr, "COR": expert_mkc, "EXP": expert_exp}
    by_key = {a.key: a for a in all_aspects}
    judges = {}
    for aspect in chosen:
        explicit = experts.get(aspect.key) or {"PQR": expert_pqr, "MKC": expert_mkc}.get(aspect.expert)
        path = explicit or judge
        if not path:
            raise UsageError(f"no judge for {aspect.key} ({aspect.expert}): give --judge or --expert-{aspect.expert.lower()}")
        judges[aspect.key] = jo.judge_config(path, device=device, dtype=dtype, load_in_4bit=load_in_4bit,
                                             load_in_8bit=load_in_8bit, trust_remote_code=trust_remote_code,
                                             backend=backend, modality="text")
    del by_key
    fields = FieldMap(id=id_field, question=question_field, answer=answer_field, answer_b=answer_b_field,
                      reference=reference_field, group=group_field, keep=tuple(keep_field or ()))
    item_list = read_items(items, fields, need_answer_b=pairwise, skip_bad=skip_bad)
    if limit is not None:
        item_list = item_list[:limit]
    if templates.experimental:
        warn(f"template preset '{templates.name}' is experimental: {templates.preset.get('status', '')}")
    decoding = Decoding(max_new_tokens=max_new_tokens, batch_size=batch_size, prompt_format=prompt_format,
                        retries=retries, retry_temperature=retry_temperature, seed=seed)
    gen_cache = jo.open_cache(cache, no_cache)
    progress = make_progress()
    info(f"judging {len(item_list)} items x {len(chosen)} aspects ({options.mode}) -> {output}")
    try:
        with ResultsFile(output, resume=resume, force=force) as results:
            stats = H.run_hdc(item_list, judges, templates, decoding, options, results, aspects=chosen,
                              cache=gen_cache, progress=progress)
    finally:
        progress.close()
        if gen_cache is not None:
            gen_cache.close()
    records = [r for r in read_jsonl(output, "results") if r.get("verb") == "hdc"]
    summary = H.summarize(records, chosen)
    summary["template"] = templates.describe()
    summary["aggregate"] = agg.spec
    summary["mode"] = options.mode
    summary["run"] = stats
    if limit is not None:
        summary["limit"] = limit
        summary["note"] = "--limit was used: debugging run, not a reportable result"
    code, message = H.exit_code_for(records, max_unparsed)
    gate = None
    if fail_below is not None and code == 0:
        low = {k: v["score"]["mean"] for k, v in summary["aspects"].items()
               if v["score"]["mean"] is not None and v["score"]["mean"] < fail_below}
        if low:
            gate = "mean score below --fail-below {:g}: {}".format(fail_below, ", ".join(f"{k} {v:.3f}" for k, v in low.items()))
    summary["exit_code"] = 10 if gate else code
    jo.write_manifest(
        output, "eval hdc",
        parameters={"judges": {k: v.path for k, v in judges.items()}, "backend": backend, "mode": options.mode,
                    "swap": swap, "aspects": [a.key for a in chosen], "aggregate": agg.spec,
                    "decoding": decoding.to_json(), "device": device, "dtype": dtype, "limit": limit,
                    "resume": resume, "template": templates.describe(), "no_reference": no_reference},
        inputs={"items": items, **({"template": template} if template else {})},
        stages=[{"name": "judge", "seconds": round(time.perf_counter() - t_start, 3)}],
        extra={"summary": summary},
    )
    _print_summary(summary, json_out)
    if gate:
        raise fail(gate, 10)
    if code:
        raise fail(message or "failures", code)


def _print_summary(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"HDC ({summary['mode']}, aggregate {summary['aggregate']})")
    for col in ("aspect", "expert", "parsed", "score mean ± sd", "sub-aspects (mean)"):
        table.add_column(col)
    for key, a in summary["aspects"].items():
        s = a["score"]
        mean = "-" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
        subs = "  ".join(f"{k} {v['mean']:.2f}" if v["mean"] is not None else f"{k} -" for k, v in a["sub_aspects"].items())
        table.add_row(key, a["expert"], f"{a['parsed']}/{a['records']}", mean, subs)
    stdout.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items()))
    stdout.print(f"records: {summary['records']} ({counts})")
    for j in summary["run"]["judges"]:
        if j.get("items_per_second"):
            stdout.print(f"judge {j['path']}: {j['generated']} generated, {j['cached']} cached, "
                         f"{j['items_per_second']} outputs/s, {j['tokens_per_second']} tokens/s")
        if j.get("load_error"):
            stdout.print(f"judge {j['path']}: could not be used: {j['load_error']}")
