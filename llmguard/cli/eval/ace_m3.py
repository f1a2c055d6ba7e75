"""``llmguard eval ace-m3``: ACE-M3 branch judges + Conclusion (merge) judge on image QA."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmguard.cli.eval import judge_options as jo
from llmguard.cli.options import PANEL_INPUT, PANEL_METHOD
from llmguard.cli.output import emit_json, fail, info, reports_errors, stdout, warn

EXIT_HELP = (
    "Exit codes: 0 every record judged and parsed (or within --max-unparsed); 1 too many judge outputs did not "
    "parse; 2 usage error; 3 some items could not be judged (missing/undecodable image, missing field, judge "
    "that is not an image-text model) — recorded per item, the rest is judged; 4 resource failure; "
    "10 --fail-below tripped."
)


def register(app: typer.Typer) -> None:
    app.command(
        "ace-m3",
        help="Judge answers to medical image questions ACE-M3 style: branch judges write criterion analyses, "
        "a Conclusion judge merges them into the final score (experimental preset: the paper's prompts are unknown).",
        epilog=EXIT_HELP,
    )(ace_m3)


@reports_errors
def ace_m3(
    items: jo.ItemsArg,
    output: jo.OutputOpt = Path("ace-m3-results.jsonl"),
    judge: jo.JudgeOpt = None,
    branch: Annotated[Optional[list[str]], typer.Option("--branch", help="Judge of one branch, KEY=PATH (e.g. EXP=/models/ACE-M3_EXP); repeatable.", rich_help_panel=jo.PANEL_JUDGE)] = None,
    conclusion: Annotated[Optional[str], typer.Option("--conclusion", help="The merge (Conclusion) judge (default: --judge).", rich_help_panel=jo.PANEL_JUDGE)] = None,
    text_only: Annotated[bool, typer.Option("--text-only-judge", help="Judges are text-only causal LMs (the image is not shown).", rich_help_panel=jo.PANEL_JUDGE)] = False,
    backend: jo.BackendOpt = "hf",
    load_in_4bit: jo.Load4Opt = False,
    load_in_8bit: jo.Load8Opt = False,
    trust_remote_code: jo.TrustOpt = False,
    merge: Annotated[str, typer.Option("--merge", help="model (the Conclusion judge), or a formula over branch scores: mean, min, weighted:REL=1,COR=2,EXP=1.", rich_help_panel=PANEL_METHOD)] = "model",
    scale: Annotated[Optional[str], typer.Option("--scale", help="Score range LOW-HIGH (default: the preset's, 1-5).", rich_help_panel=PANEL_METHOD)] = None,
    template: jo.TemplateOpt = None,
    prompt_format: jo.PromptFormatOpt = "auto",
    max_new_tokens: jo.MaxNewOpt = 512,
    retries: jo.RetriesOpt = 0,
    retry_temperature: jo.RetryTempOpt = 0.7,
    seed: jo.SeedOpt = 0,
    id_field: jo.IdFieldOpt = "id",
    question_field: jo.QuestionFieldOpt = "question",
    answer_field: jo.AnswerFieldOpt = "answer",
    reference_field: jo.ReferenceFieldOpt = "reference",
    image_field: Annotated[str, typer.Option("--image-field", help="Field holding the image: a path (relative to ITEMS), data: URI or URL.", rich_help_panel=PANEL_INPUT)] = "image",
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
    """Judge ITEMS (image, question, answer [, reference]) and write branch and conclusion records to OUTPUT."""
    from llmguard.cli.progress import make_progress
    from llmguard.errors import UsageError
    from llmguard.eval import ace_m3 as A
    from llmguard.eval.hdc import exit_code_for
    from llmguard.eval.items import FieldMap, ResultsFile, read_items, read_jsonl
    from llmguard.eval.runner import Decoding
    from llmguard.eval.templating import load_templates

    t_start = time.perf_counter()
    if resume and force:
        raise UsageError("--resume and --force contradict each other")
    templates = load_templates("ace-m3", template)
    branches = A.branches_from_preset(templates)
    merge_spec = A.Merge.parse(merge, branches)
    lo, hi = templates.scale
    if scale:
        try:
            a, b = scale.split("-", 1)
            lo, hi = float(a), float(b)
        except ValueError:
            raise UsageError(f"--scale: {scale!r} is not LOW-HIGH (e.g. 1-5)") from None
        if lo >= hi:
            raise UsageError(f"--scale: low {lo:g} must be below high {hi:g}")
    options = A.AceOptions(merge=merge_spec, scale=(lo, hi), use_reference=not no_reference,
                           branch_marker=str(templates.preset.get("branch_score_marker", "Score")),
                           conclusion_marker=str(templates.preset.get("conclusion_score_marker", "Final Score")))
    modality = "text" if text_only else "image-text"

    def cfg(path: str) -> Any:
        return jo.judge_config(path, device=device, dtype=dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                               trust_remote_code=trust_remote_code, backend=backend, modality=modality)

    explicit: dict[str, str] = {}
    known = {b.key for b in branches} | {b.expert for b in branches}
    for spec in branch or []:
        key, sep, path = spec.partition("=")
        if not sep or not path:
            raise UsageError(f"--branch: {spec!r} is not KEY=PATH")
        if key.strip().upper() not in known:
            raise UsageError(f"--branch: unknown branch {key!r} (known: {', '.join(sorted(known))})")
        explicit[key.strip().upper()] = path
    branch_judges = {}
    for b in branches:
        path = explicit.get(b.key) or explicit.get(b.expert) or judge
        if not path:
            raise UsageError(f"no judge for branch {b.key}: give --judge or --branch {b.key}=PATH")
        branch_judges[b.key] = cfg(path)
    conclusion_path = conclusion or judge
    conclusion_cfg = cfg(conclusion_path) if (conclusion_path and merge_spec.kind == "model") else None
    if merge_spec.kind == "model" and conclusion_cfg is None:
        raise UsageError("--merge model needs a Conclusion judge: give --conclusion or --judge (or --merge mean)")
    fields = FieldMap(id=id_field, question=question_field, answer=answer_field, reference=reference_field,
                      image=image_field, group=group_field, keep=tuple(keep_field or ()))
    item_list = read_items(items, fields, need_image=True, skip_bad=skip_bad)
    if limit is not None:
        item_list = item_list[:limit]
    if templates.experimental:
        warn(f"template preset '{templates.name}' is experimental: {templates.preset.get('status', '')}")
    decoding = Decoding(max_new_tokens=max_new_tokens, batch_size=batch_size, prompt_format=prompt_format,
                        retries=retries, retry_temperature=retry_temperature, seed=seed)
    gen_cache = jo.open_cache(cache, no_cache)
    progress = make_progress()
    info(f"judging {len(item_list)} items: {len(branches)} branches + merge ({merge_spec.spec}) -> {output}")
    try:
        with ResultsFile(output, resume=resume, force=force) as results:
            stats = A.run_ace_m3(item_list, branch_judges, conclusion_cfg, templates, decoding, options, results,
                                 base_dir=Path(items).resolve().parent, cache=gen_cache, progress=progress)
    finally:
        progress.close()
        if gen_cache is not None:
            gen_cache.close()
    records = [r for r in read_jsonl(output, "results") if r.get("verb") == "ace-m3"]
    summary = A.summarize(records)
    summary.update(template=templates.describe(), merge=merge_spec.spec, scale=[lo, hi], run=stats)
    if limit is not None:
        summary["note"] = "--limit was used: debugging run, not a reportable result"
    # upstream failures are consequences of branch failures, counted there
    code, message = exit_code_for([r for r in records if r.get("parse_status") != "upstream_failed"], max_unparsed)
    gate = None
    final = summary["criteria"].get("conclusion:overall", {})
    if fail_below is not None and code == 0 and final.get("mean") is not None and final["mean"] < fail_below:
        gate = f"mean final score {final['mean']:.3f} below --fail-below {fail_below:g}"
    summary["exit_code"] = 10 if gate else code
    jo.write_manifest(
        output, "eval ace-m3",
        parameters={"branch_judges": {k: v.path for k, v in branch_judges.items()},
                    "conclusion_judge": conclusion_cfg.path if conclusion_cfg else None, "merge": merge_spec.spec,
                    "scale": [lo, hi], "modality": modality, "backend": backend, "decoding": decoding.to_json(),
                    "device": device, "dtype": dtype, "limit": limit, "template": templates.describe()},
        inputs={"items": items, **({"template": template} if template else {})},
        stages=[{"name": "judge", "seconds": round(time.perf_counter() - t_start, 3)}],
        extra={"summary": summary},
    )
    if json_out:
        emit_json(summary)
    else:
        _print(summary)
    if gate:
        raise fail(gate, 10)
    if code:
        raise fail(message or "failures", code)


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
