"""``llmguard realign ...``: safety realignment verbs (RESTA, NLSR, SOMF)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from llmguard.cli.derive import JSON_FLAG, Extra, verb_command
from llmguard.cli.options import PANEL_OUTPUT
from llmguard.cli.output import emit_json, info, stdout, warn
from llmguard.realign.nlsr.options import NlsrOptions
from llmguard.realign.registry import get_method
from llmguard.realign.resta_options import RestaOptions, RevertOptions
from llmguard.realign.safelora.options import SafeLoraOptions
from llmguard.realign.somf.options import SomfOptions

app = typer.Typer(help="Restore safety to a fine-tuned model: NLSR, SOMF, and RESTA and Safe LoRA as training-free baselines.", no_args_is_help=True)


def method_command(name: str, *, panel: str, extra: dict[str, Extra]) -> Any:
    """``llmguard realign NAME``, its flags derived from the options class the registry names."""
    return verb_command(app, name, get_method(name).options_class(), panel=panel, extra=extra)


@method_command("resta", panel="Training-free baselines", extra={"json_output": JSON_FLAG})
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


_TOP_FLAG: Extra = (Annotated[int, typer.Option("--top", help="Modules shown in the similarity chart (0: all).", rich_help_panel=PANEL_OUTPUT)], 0)


@method_command("nlsr", panel="Methods", extra={"top": _TOP_FLAG, "json_output": JSON_FLAG})
def nlsr_command(options: NlsrOptions, *, top: int = 0, json_output: bool = False) -> None:
    """NLSR: transplant safety-critical neurons of an amplified aligned model into the least similar modules.

    Example: llmguard realign nlsr -a aligned-lora/ -f finetuned-lora/ -c safe_pairs.jsonl -o realigned/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.nlsr.method import run_nlsr, with_reference_calibration

    progress = make_progress()
    if options.calibration_from_reference is not None:
        options = with_reference_calibration(options, progress)
        info(f"calibration: {len(options.calibration_pairs or ())} safe reference responses kept")
    if options.search is not None:
        _run_search(options, json_output=json_output)
        return
    result = run_nlsr(options, progress=progress)
    for stage in result.manifest.get("stages", []):
        if stage.get("name") == "calibration data" and stage.get("skipped"):
            warn(f"calibration data: {stage['skipped']} row(s) skipped (first {stage.get('first_skipped', '-')})")
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


def _run_search(options: NlsrOptions, *, json_output: bool) -> None:
    from llmguard.cli.progress import make_progress
    from llmguard.errors import GateTripped
    from llmguard.realign.nlsr.search import load_dev_data, run_search

    dev = load_dev_data(options)
    items = dev.task_items
    info(f"searching {len(options.grid())} NLSR settings on {len(dev.prompts)} DEV prompts" + (f" and {len(items)} task items" if items else ""))
    if message := dev.warning(options.max_task_drop):
        warn(message)
    result = run_search(options, progress=make_progress(), dev=dev)
    if json_output:
        emit_json(result.to_dict())
    else:
        _search_table(result)
    if result.chosen is None:
        raise GateTripped(f"no setting kept the DEV task accuracy within {options.max_task_drop:g} points of the fine-tuned model; nothing written")
    if not json_output:
        chosen = result.points[result.chosen]
        params = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in chosen.params.items())
        stdout.print(f"chose #{result.chosen + 1} ({params}); wrote {result.output}")


def _search_table(result: Any) -> None:
    from rich.table import Table

    from llmguard.realign.nlsr.grid import describe

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


@verb_command(app, "revert", RevertOptions, panel="Methods", extra={"json_output": JSON_FLAG})
def revert_command(options: RevertOptions, *, json_output: bool = False) -> None:
    """Undo a realign patch exactly: restore every overwritten value.

    Example: llmguard realign revert realigned/ -o finetuned-again/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.nlsr.patch import run_revert

    result = run_revert(options, progress=make_progress())
    if json_output:
        emit_json({"output": result.output, "tensors_restored": result.tensors_restored, "values_restored": result.values_restored})
        return
    stdout.print(f"wrote {result.output}: restored {result.values_restored} values in {result.tensors_restored} tensors")


@method_command("somf", panel="Methods", extra={"json_output": JSON_FLAG})
def somf_command(options: SomfOptions, *, json_output: bool = False) -> None:
    """SOMF: learn a mask over each fine-tune's task vector with DPO on safety pairs, keep the safe part, fuse.

    Example: llmguard realign somf -a aligned-lora/ -f finetuned-lora/ -p preference.jsonl -o realigned/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.somf.method import run_somf

    result = run_somf(options, progress=make_progress())
    for note in result.notes:
        warn(note)
    losses = result.losses
    summary = {"output": result.output, "dry_run": result.dry_run, "space": result.space, "granularity": result.granularity,
               "mask_parameters": result.mask_parameters, "mask_density": result.mask_density,
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "task_loss_first": result.task_losses[0] if result.task_losses else None,
               "task_loss_last": result.task_losses[-1] if result.task_losses else None,
               "module_density": result.module_density, "manifest": result.manifest}
    if json_output:
        emit_json(summary)
        return
    what = "nothing written (dry run)" if result.dry_run else f"wrote {'adapter' if result.space == 'factor' else 'checkpoint'} {result.output}"
    loss = f"; DPO loss {losses[0]:.4f} → {losses[-1]:.4f}" if losses else ""
    task = result.task_losses
    loss += f", task NLL {task[0]:.4f} → {task[-1]:.4f}" if task else ""
    stdout.print(f"SOMF ({result.space} space, {result.granularity} mask): kept {result.mask_density:.1%} of "
                 f"{result.mask_parameters} units{loss}; {what}")
    stages = ", ".join(f"{s['name']} {s['seconds']:.2f}s" for s in result.manifest["stages"])
    info(f"{stages}; peak RSS {result.manifest['peak_rss_bytes'] / 2**20:.0f} MiB")


@method_command("safelora", panel="Training-free baselines", extra={"json_output": JSON_FLAG})
def safelora_command(options: SafeLoraOptions, *, json_output: bool = False) -> None:
    """Safe LoRA: B ← C·B (C = V Vᵀ/‖V‖_F, V = W_aligned − W_base) for modules whose projected cosine is low.

    Example: llmguard realign safelora -a aligned/ --base base/ -f finetuned-lora/ --threshold 0.5 -o projected/
    """
    from llmguard.cli.progress import make_progress
    from llmguard.realign.safelora.method import run_safelora

    result = run_safelora(options, progress=make_progress())
    if json_output:
        emit_json({"output": result.output, "dry_run": result.dry_run, "rule": result.rule, "modules_projected": result.projected,
                   "modules": result.modules, "manifest": result.manifest})
        return
    what = "nothing written (dry run)" if result.dry_run else f"wrote adapter {result.output}"
    stdout.print(f"Safe LoRA: projected {result.projected} of {len(result.modules)} modules ({result.rule}); {what}")
