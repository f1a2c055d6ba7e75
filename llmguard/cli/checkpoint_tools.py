"""Top-level checkpoint verbs: ``inspect`` and ``diff``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmguard.cli.derive import JSON_FLAG, Extra, verb_command
from llmguard.cli.options import PANEL_OUTPUT
from llmguard.cli.output import emit_json, stdout
from llmguard.io.checkpoint_options import DiffOptions, InspectOptions

PANEL = "Checkpoint tools"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _fail_on_nonfinite(summary: dict[str, Any]) -> None:
    from llmguard.io.finite import NonFiniteError

    found = summary.get("scan")
    if found and found["nonfinite_values"]:
        first = found["first_nonfinite"][0]
        raise NonFiniteError(first["name"], first["nonfinite"], f"(and {found['nonfinite_values'] - first['nonfinite']} more in other tensors)"
                             if found["tensors_nonfinite"] > 1 else "in this checkpoint")


def inspect_command(options: InspectOptions, *, json_output: bool = False) -> None:
    """Summarise a checkpoint or adapter: architecture, parameters, dtypes, shards, LoRA settings.

    Example: llmguard inspect ./my-model --json
    """
    from llmguard.io.summary import run_inspect

    path = options.path
    summary = run_inspect(options)
    if json_output:
        emit_json(summary)
        _fail_on_nonfinite(summary)
        return
    from rich.table import Table

    table = Table(title=str(path), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    if summary["kind"] == "lora_adapter":
        rows = [
            ("kind", "PEFT LoRA adapter"),
            ("base model", summary["base_model"]),
            ("rank / alpha", f"{summary['rank']} / {summary['alpha']:g} (scale {summary['scaling']:.4g}{', rsLoRA' if summary['rslora'] else ''})"),
            ("target modules", ", ".join(summary["adapted_module_types"])),
            ("adapted modules", str(summary["modules"])),
            ("ranks", ", ".join(f"r={r}: {n}" for r, n in summary["ranks"].items())),
            ("modules_to_save", ", ".join(summary["modules_to_save"]) or "-"),
            ("parameters", _count(summary["parameters"])),
            ("dtypes", ", ".join(summary["dtypes"])),
            ("file size", _bytes(summary["bytes"])),
        ]
    else:
        largest = summary["largest_tensor"] or {}
        rows = [
            ("kind", f"checkpoint ({summary['format']})"),
            ("architecture", summary["architecture"] or "-"),
            ("parameters", _count(summary["parameters"])),
            ("tensors", str(summary["tensors"])),
            ("dtypes", ", ".join(f"{k}: {_count(v)}" for k, v in summary["dtypes"].items())),
            ("shards", f"{len(summary['shards'])} ({_bytes(summary['total_bytes'])})"),
            ("largest tensor", f"{largest.get('name')} {largest.get('shape')} {largest.get('dtype')} {_bytes(largest.get('bytes'))}"),
            ("tied embeddings", f"{summary['tied_embeddings']} (lm_head stored: {summary['lm_head_stored']})"),
        ]
        structure = summary.get("structure") or {}
        if "unsupported" in structure:
            rows.append(("structure", f"not understood: {structure['unsupported']}"))
        elif structure:
            extra = [f"{structure['transposed_linear_maps']} transposed (Conv1D)"] if structure["transposed_linear_maps"] else []
            if structure["expert_linear_maps"]:
                fused = ", ".join(structure["fused_in_memory"])
                extra.append(f"{structure['expert_linear_maps']} expert projections (fused in memory: {fused})")
            if structure.get("experts_fused_on_disk"):
                extra.append(f"{len(structure['experts_fused_on_disk'])} expert parameters stored fused (3-D) on disk")
            rows.append(("linear maps", f"{structure['linear_maps']} in {structure['decoder_layers']} decoder layers"
                         + (f"; {'; '.join(extra)}" if extra else "")))
            rows.append(("attention", str(structure["attention"])))
    if "scan" in summary:
        found = summary["scan"]
        rows.append(("NaN/Inf values", f"{found['nonfinite_values']} in {found['tensors_nonfinite']} of {found['tensors_scanned']} tensors"))
    for key, value in rows:
        table.add_row(key, str(value))
    stdout.print(table)
    if summary["kind"] == "checkpoint" and len(summary["shards"]) > 1:
        shards = Table("shard", "tensors", "bytes", title="shard layout", title_justify="left")
        for shard in summary["shards"]:
            shards.add_row(shard["file"], str(shard["tensors"]), _bytes(shard["bytes"]))
        stdout.print(shards)
    _fail_on_nonfinite(summary)


_TOP: Extra = (Annotated[int, typer.Option("--top", help="Rows in the chart of least similar modules.", rich_help_panel=PANEL_OUTPUT)], 20)


def diff_command(options: DiffOptions, *, top: int = 20, json_output: bool = False) -> None:
    """Per-module cosine similarity and relative change ‖B−A‖/‖A‖ of two checkpoints or adapters.

    Example: llmguard diff aligned-adapter/ finetuned-adapter/ --top 10
    """
    from llmguard.cli.progress import make_progress
    from llmguard.io.compare import run_diff

    a, b = options.a, options.b
    report = run_diff(options, progress=make_progress())
    if json_output:
        emit_json(report)
        return
    render_similarity_chart(report["modules"], top, title=f"least similar modules ({report['mode']}): {a} vs {b}")
    s = report["summary"]
    if s["mean_cosine"] is not None:
        stdout.print(f"{s['modules']} modules; mean cosine {s['mean_cosine']:.6f}; min {s['min_cosine']:.6f} ({s['least_similar']})")


def render_similarity_chart(rows: list[dict[str, Any]], top: int, title: str) -> None:
    """Terminal bar chart of the ``top`` least similar rows (bar length ∝ 1 − cosine)."""
    from rich.table import Table

    scored = sorted((r for r in rows if r.get("cosine") is not None), key=lambda r: r["cosine"])[: max(top, 0)]
    worst = max((1.0 - r["cosine"] for r in scored), default=0.0) or 1.0
    table = Table(title=title, title_justify="left")
    table.add_column("module", overflow="fold")
    table.add_column("cosine", justify="right")
    table.add_column("rel. change", justify="right")
    table.add_column("1 − cosine", min_width=32)
    for r in scored:
        width = int(round(30 * (1.0 - r["cosine"]) / worst))
        rel = "-" if r.get("relative_change") is None else f"{r['relative_change']:.4g}"
        table.add_row(r["module"], f"{r['cosine']:.6f}", rel, "█" * width)
    stdout.print(table)
    skipped = [r for r in rows if r.get("cosine") is None]
    if skipped:
        stdout.print(f"{len(skipped)} module(s) not comparable (only in one input or zero delta)")


def register(app: typer.Typer) -> None:
    """Attach the checkpoint verbs to the root app."""
    verb_command(app, "inspect", InspectOptions, panel=PANEL, extra={"json_output": JSON_FLAG})(inspect_command)
    verb_command(app, "diff", DiffOptions, panel=PANEL, extra={"top": _TOP, "json_output": JSON_FLAG})(diff_command)
