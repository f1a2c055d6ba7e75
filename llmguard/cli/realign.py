"""``llmguard realign ...``: safety realignment verbs (RESTA, NLSR, SOMF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmguard.cli.options import (
    PANEL_INPUT,
    PANEL_METHOD,
    PANEL_OUTPUT,
    AllowPickleOpt,
    BaseOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    MaxShardSizeOpt,
    OutputDirOpt,
)
from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.cli.output import emit_json, info, reports_errors, stdout, warn
from llmguard.errors import UsageError
from llmguard.realign.resta_options import RestaOptions

app = typer.Typer(help="Restore safety to a fine-tuned model: NLSR, and RESTA as a training-free baseline.", no_args_is_help=True)


@verb_command(app, "resta", RestaOptions, panel="Training-free baselines", extra={"json_output": JSON_FLAG})
def resta_command(options: RestaOptions, *, json_output: bool = False) -> None:
    """RESTA: θ_out = θ_F + γ·(θ_A − θ_U), streamed tensor by tensor.

    Example: llmguard realign resta -f ft/ -a aligned/ -u base/ --gamma 0.5 -o out/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.resta import run_resta

    result = run_resta(options, progress=make_progress())
    if json_output:
        emit_json(result.manifest)
        return
    stages = ", ".join(f"{s['name']} {s['seconds']:.2f}s" for s in result.manifest["stages"])
    kind = "adapter" if result.as_adapter else "checkpoint"
    stdout.print(f"wrote {kind} {result.output} ({result.tensors_written} tensors; {stages}; peak RSS {result.manifest['peak_rss_bytes'] / 2**20:.0f} MiB)")
    info(f"manifest: {result.output / 'llmguard.json'}")


_PANEL_CALIB = "Calibration data"
_PANEL_SELECT = "Module selection"
_PANEL_SEARCH = "Dev-split search"


@app.command("nlsr", rich_help_panel="Methods")
@reports_errors
def nlsr_command(
    finetuned: Annotated[Path, typer.Option("--finetuned", "-f", help="Fine-tuned checkpoint or LoRA adapter to realign.", rich_help_panel=PANEL_INPUT)],
    aligned: Annotated[Optional[Path], typer.Option("--aligned", "-a", help="Initially aligned checkpoint or LoRA adapter.", rich_help_panel=PANEL_INPUT)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (written atomically; adapter in, adapter out).", rich_help_panel=PANEL_OUTPUT)] = None,
    base: BaseOpt = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="A prepared safety reference (checkpoint or adapter) instead of amplifying --aligned.", rich_help_panel=PANEL_INPUT)] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", "-c", help="Safe (prompt, response) pairs: JSONL/JSON/CSV/Parquet.", rich_help_panel=_PANEL_CALIB)] = None,
    calibration_from_reference: Annotated[Optional[int], typer.Option("--calibration-from-reference", metavar="N", help="Generate N safe responses with the reference model to --harmful-prompts, keep those the safety judge passes.", rich_help_panel=_PANEL_CALIB)] = None,
    harmful_prompts: Annotated[Optional[Path], typer.Option("--harmful-prompts", help="Harmful prompts (JSONL with a prompt field) for --calibration-from-reference.", rich_help_panel=_PANEL_CALIB)] = None,
    prompt_field: Annotated[str, typer.Option("--prompt-field", help="Prompt field of the calibration data.", rich_help_panel=_PANEL_CALIB)] = "prompt",
    response_field: Annotated[str, typer.Option("--response-field", help="Response field of the calibration data.", rich_help_panel=_PANEL_CALIB)] = "response",
    template: Annotated[str, typer.Option("--template", help="Prompt template: auto, chat, plain, none or a string with {prompt}.", rich_help_panel=_PANEL_CALIB)] = "auto",
    calibration_samples: Annotated[int, typer.Option("--calibration-samples", help="Use at most this many pairs (seeded sample).", rich_help_panel=_PANEL_CALIB)] = 512,
    max_response_tokens: Annotated[int, typer.Option("--max-response-tokens", help="Response tokens per pair that contribute.", rich_help_panel=_PANEL_CALIB)] = 256,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest tokenised pair.", rich_help_panel=_PANEL_CALIB)] = 512,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed data lines instead of failing.", rich_help_panel=_PANEL_CALIB)] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="ExPO amplification: ΔW_ref = (1+α)·ΔW_aligned.", rich_help_panel=PANEL_METHOD)] = 0.9,
    amplify_mode: Annotated[str, typer.Option("--amplify-mode", help="expo (B × (1+α)) or official (both LoRA factors × 2α, as the NLSR code).", rich_help_panel=PANEL_METHOD)] = "expo",
    scorer: Annotated[str, typer.Option("--scorer", help="Safety-critical units: actsvd, wanda or magnitude (no data).", rich_help_panel=PANEL_METHOD)] = "actsvd",
    mask_ratio: Annotated[float, typer.Option("--mask-ratio", help="Fraction of units kept per tensor, in (0, 1).", rich_help_panel=PANEL_METHOD)] = 0.2,
    actsvd_keep: Annotated[float, typer.Option("--actsvd-keep", help="ActSVD: fraction of output directions kept (official 0.8).", rich_help_panel=PANEL_METHOD)] = 0.8,
    unit: Annotated[str, typer.Option("--unit", help="auto, element (LoRA elements; the fine-tune continues the aligned adapter), row (ΔW output rows) or weight (single ΔW entries).", rich_help_panel=PANEL_METHOD)] = "auto",
    select_mode: Annotated[str, typer.Option("--select", help="least-similar (deterministic) or official (seeded Bernoulli of the NLSR code).", rich_help_panel=_PANEL_SELECT)] = "least-similar",
    budget: Annotated[Optional[str], typer.Option("--budget", help="Patch the K least similar modules: a count (12) or a fraction (0.5, the default).", rich_help_panel=_PANEL_SELECT)] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Patch every module with similarity below τ (instead of --budget).", rich_help_panel=_PANEL_SELECT)] = None,
    prune_rate: Annotated[float, typer.Option("--prune-rate", help="--select official: mean patch probability.", rich_help_panel=_PANEL_SELECT)] = 0.5,
    epsilon: Annotated[float, typer.Option("--epsilon", help="--select official: probability spread ±ε.", rich_help_panel=_PANEL_SELECT)] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --select official and of calibration sampling.", rich_help_panel=_PANEL_SELECT)] = 42,
    calibration_mode: Annotated[str, typer.Option("--calibration-mode", help="auto, layerwise (one decoder layer on the device) or whole.", rich_help_panel="Performance")] = "auto",
    batch_tokens: Annotated[int, typer.Option("--batch-tokens", help="Padded tokens per calibration batch.", rich_help_panel="Performance")] = 8192,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    max_shard_size: MaxShardSizeOpt = "5GB",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be patched; write nothing.", rich_help_panel=PANEL_OUTPUT)] = False,
    top: Annotated[int, typer.Option("--top", help="Modules shown in the similarity chart (0: all).", rich_help_panel=PANEL_OUTPUT)] = 0,
    search: Annotated[Optional[str], typer.Option("--search", metavar="GRID", help="Try every point of GRID on DEV data and keep the best, e.g. 'alpha=0.5,0.9;budget=0.25,0.5' (keys: alpha, budget, threshold, mask-ratio, scorer, unit, actsvd-keep, amplify-mode).", rich_help_panel=_PANEL_SEARCH)] = None,
    dev_prompts: Annotated[Optional[Path], typer.Option("--dev-prompts", help="--search: held-out DEV harmful prompts (JSONL with a prompt field).", rich_help_panel=_PANEL_SEARCH)] = None,
    dev_task: Annotated[Optional[str], typer.Option("--dev-task", help="--search: task name for --dev-task-data (sst2, arith or any label).", rich_help_panel=_PANEL_SEARCH)] = None,
    dev_task_data: Annotated[Optional[Path], typer.Option("--dev-task-data", help="--search: DEV task items (prompt, answer) whose accuracy must hold.", rich_help_panel=_PANEL_SEARCH)] = None,
    dev_judge: Annotated[str, typer.Option("--dev-judge", help="--search: keyword, or a moderation model (Llama Guard / beaver-dam layout).", rich_help_panel=_PANEL_SEARCH)] = "keyword",
    max_task_drop: Annotated[float, typer.Option("--max-task-drop", help="--search: largest DEV task-accuracy loss (points) a chosen point may have.", rich_help_panel=_PANEL_SEARCH)] = 5.0,
    force: ForceOpt = False,
    allow_pickle: AllowPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """NLSR: transplant safety-critical neurons of an amplified aligned model into the least similar modules.

    Example: llmguard realign nlsr -a aligned-lora/ -f finetuned-lora/ -c safe_pairs.jsonl -o realigned/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.nlsr import nlsr

    pairs = None
    if calibration_from_reference is not None:
        from llmguard.realign.nlsr.calibration_set import pairs_from_reference

        if calibration is not None:
            raise UsageError("give --calibration or --calibration-from-reference, not both")
        pairs = pairs_from_reference(
            aligned=aligned, base=base, reference=reference, harmful_prompts=harmful_prompts, count=calibration_from_reference,
            alpha=alpha, amplify_mode=amplify_mode, prompt_field=prompt_field, template=template, device=device, seed=seed,
            allow_pickle=allow_pickle, progress=make_progress(),
        )
        info(f"calibration: {len(pairs)} safe reference responses kept")
    kwargs = dict(
        aligned=aligned, base=base, reference=reference, calibration=calibration, calibration_pairs=pairs,
        alpha=alpha, amplify_mode=amplify_mode, scorer=scorer, mask_ratio=mask_ratio, actsvd_keep=actsvd_keep, unit=unit,
        select_mode=select_mode, budget=budget, threshold=threshold, prune_rate=prune_rate, epsilon=epsilon, seed=seed,
        prompt_field=prompt_field, response_field=response_field, template=template, calibration_samples=calibration_samples,
        max_length=max_length, max_response_tokens=max_response_tokens, batch_tokens=batch_tokens, calibration_mode=calibration_mode,
        skip_bad=skip_bad, device=device, dtype=dtype, max_shard_size=max_shard_size, allow_pickle=allow_pickle,
    )
    if search is not None:
        _run_search(finetuned, output, search, kwargs, dev_prompts=dev_prompts, dev_task=dev_task, dev_task_data=dev_task_data,
                    dev_judge=dev_judge, max_task_drop=max_task_drop, dry_run=dry_run, force=force, json_output=json_output)
        return
    if any(v is not None for v in (dev_prompts, dev_task, dev_task_data)):
        raise UsageError("--dev-prompts/--dev-task/--dev-task-data only apply with --search")
    result = nlsr(finetuned, output, **kwargs, force=force, dry_run=dry_run, progress=make_progress())
    if json_output:
        emit_json({"output": result.output, "dry_run": result.dry_run, "unit": result.unit, "selection": result.selection_rule,
                   "modules_patched": result.patched, "values_changed": result.parameters_changed, "modules": result.modules,
                   "manifest": result.manifest})
        return
    _similarity_chart(result.modules, top, f"NLSR per-module similarity ({result.unit} units; ◆ = patched)")
    stages = ", ".join(f"{s['name']} {s['seconds']:.2f}s" for s in result.manifest["stages"])
    verb = "would patch" if result.dry_run else "patched"
    what = "nothing written (dry run)" if result.dry_run else f"wrote {result.output}"
    changed = f"{result.parameters_changed} values in the masks" if result.dry_run else f"{result.parameters_changed} values changed"
    stdout.print(f"{verb} {result.patched} of {len(result.modules)} modules ({result.selection_rule}); {changed}; {what}")
    info(f"{stages}; peak RSS {result.manifest['peak_rss_bytes'] / 2**20:.0f} MiB")


def _run_search(finetuned: Path, output: Optional[Path], grid_spec: str, kwargs: dict, *, dev_prompts: Optional[Path],
                dev_task: Optional[str], dev_task_data: Optional[Path], dev_judge: str, max_task_drop: float, dry_run: bool,
                force: bool, json_output: bool) -> None:
    from llmguard.cli.progress import make_progress
    from llmguard.errors import GateTripped
    from llmguard.eval.safety import read_records
    from llmguard.realign.nlsr.search import nlsr_search, parse_grid, safety_evaluator, task_window_warning

    grid = parse_grid(grid_spec)
    if dry_run:  # refused here too, before any output, so the error stays the only line on stderr
        raise UsageError("--search writes the chosen model; it cannot be combined with --dry-run")
    if output is None:
        raise UsageError("--search needs -o/--output")
    if dev_prompts is None:
        raise UsageError("--search needs --dev-prompts (held-out harmful prompts; keep the test split for the report)")
    if max_task_drop < 0:
        raise UsageError(f"--max-task-drop {max_task_drop}: must be non-negative")
    prompts = read_records(dev_prompts, required=["prompt"], what="dev prompts")
    items = read_records(dev_task_data, required=["prompt", "answer"], what="dev task data") if dev_task_data else None
    if dev_task and items is None:
        raise UsageError(f"--dev-task {dev_task}: give its DEV items with --dev-task-data")
    evaluate = safety_evaluator(prompts, task=dev_task or ("task" if items else None), task_items=items, judge=dev_judge,
                                device=kwargs["device"])
    info(f"searching {len(grid)} NLSR settings on {len(prompts)} DEV prompts" + (f" and {len(items)} task items" if items else ""))
    if items and (message := task_window_warning(len(items), max_task_drop)):
        warn(message)
    result = nlsr_search(finetuned, output, grid, evaluate, max_task_drop=max_task_drop, force=force,
                         progress=make_progress(), **kwargs)
    table = result.to_dict()
    if json_output:
        emit_json(table)
    else:
        _search_table(result)
    if result.chosen is None:
        raise GateTripped(f"no setting kept the DEV task accuracy within {max_task_drop:g} points of the fine-tuned model; nothing written")
    if not json_output:
        chosen = result.points[result.chosen]
        params = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in chosen.params.items())
        stdout.print(f"chose #{result.chosen + 1} ({params}); wrote {result.output}")


def _search_table(result: Any) -> None:
    from rich.table import Table

    from llmguard.realign.nlsr.search import describe

    def pct(x: Optional[float]) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    table = Table(title="NLSR search on DEV (★ = chosen)", title_justify="left")
    # numbers never wrap; on a narrow terminal (or a pipe: 80 columns) the setting folds instead
    for column in ("#", "setting", "harmful %", "task %", "modules", "values changed", ""):
        if column == "setting":
            table.add_column(column, justify="left", overflow="fold", ratio=1)
        else:
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column.split()[0]) if column else 1)
    base = result.baseline
    table.add_row("-", "fine-tuned (no realignment)", pct(base["harmful_rate"]), pct(base["task_accuracy"]), "0", "0", "")
    for i, point in enumerate(result.points):
        table.add_row(str(i + 1), describe(point.params), pct(point.harmful_rate), pct(point.task_accuracy), str(point.modules_patched),
                      str(point.values_changed), "★" if i == result.chosen else "")
    stdout.print(table)


def _similarity_chart(rows: list[dict], top: int, title: str) -> None:
    """Bar per module (length ∝ similarity over the plotted range), patched modules marked."""
    from rich.table import Table

    shown = sorted(rows, key=lambda r: r["similarity"])[:top] if top > 0 else rows
    if not shown:
        return
    low = min(r["similarity"] for r in shown)
    high = max(r["similarity"] for r in shown)
    span = (high - low) or 1.0
    table = Table(title=title, title_justify="left")
    table.add_column("module", overflow="fold")
    table.add_column("similarity", justify="right")
    table.add_column("", min_width=32)
    table.add_column("patched", justify="center")
    for r in shown:
        width = 1 + int(round(29 * (r["similarity"] - low) / span))
        style = "red" if r["patched"] else "green"
        table.add_row(r["module"], f"{r['similarity']:.4f}", f"[{style}]{'█' * width}[/{style}]", "◆" if r["patched"] else "")
    stdout.print(table)
    stdout.print(f"bars span similarity {low:.4f} … {high:.4f}")


@app.command("revert", rich_help_panel="Methods")
@reports_errors
def revert_command(
    patched: Annotated[Path, typer.Argument(help="A directory written by llmguard realign (carries realign_patch.json).")],
    output: OutputDirOpt,
    patch: Annotated[Optional[Path], typer.Option("--patch", help="Patch file (default: the one inside PATCHED).", rich_help_panel=PANEL_INPUT)] = None,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Undo a realign patch exactly: restore every overwritten value.

    Example: llmguard realign revert realigned/ -o finetuned-again/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.nlsr import revert

    result = revert(patched, output, patch=patch, force=force, progress=make_progress())
    if json_output:
        emit_json({"output": result.output, "tensors_restored": result.tensors_restored, "values_restored": result.values_restored})
        return
    stdout.print(f"wrote {result.output}: restored {result.values_restored} values in {result.tensors_restored} tensors")
