"""``llmguard eval agree``: agreement of judge scores with human labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmguard.cli.options import PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT
from llmguard.cli.output import emit_json, reports_errors, stdout, warn


def register(app: typer.Typer) -> None:
    app.command(
        "agree",
        help="Agreement of judge results with human labels per criterion: Pearson, Spearman, Kendall tau-b, "
        "ICC(2,1) and ICC(3,1), quadratic-weighted kappa, MAE, exact/±1 agreement, pairwise accuracy with and "
        "without ties, swap consistency, bootstrap 95% CIs over items.",
        epilog="Exit codes: 0 report printed; 2 usage error; 3 unreadable inputs or nothing matched; "
        "10 --fail-below tripped.",
    )(agree)


@reports_errors
def agree(
    pred: Annotated[Path, typer.Option("--pred", help="Judge results JSONL (eval hdc / eval ace-m3 output, or any JSONL with id + scores).", rich_help_panel=PANEL_INPUT)],
    human: Annotated[Path, typer.Option("--human", help="Human labels JSONL (id + one field per criterion, or criterion + score).", rich_help_panel=PANEL_INPUT)],
    by: Annotated[str, typer.Option("--by", help="Break down by: criterion (default), none, or comma list with meta fields (e.g. criterion,scenario).", rich_help_panel=PANEL_METHOD)] = "criterion",
    criteria: Annotated[Optional[str], typer.Option("--criteria", help="Only these criteria (comma list).", rich_help_panel=PANEL_METHOD)] = None,
    id_field: Annotated[str, typer.Option("--id-field", help="Id field in the predictions.", rich_help_panel=PANEL_INPUT)] = "id",
    human_id_field: Annotated[Optional[str], typer.Option("--human-id-field", help="Id field in the labels (default: --id-field).", rich_help_panel=PANEL_INPUT)] = None,
    tie_threshold: Annotated[float, typer.Option("--tie-threshold", help="Judge score differences up to this count as ties.", rich_help_panel=PANEL_METHOD, min=0.0)] = 0.0,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples over items for 95% CIs (0: none).", rich_help_panel=PANEL_METHOD, min=0)] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.", rich_help_panel=PANEL_METHOD)] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.", rich_help_panel=PANEL_OUTPUT)] = False,
    fail_below: Annotated[Optional[float], typer.Option("--fail-below", help="Exit 10 when a cell's Pearson r is below this (CI gate).", rich_help_panel=PANEL_OUTPUT)] = None,
) -> None:
    """Compare judge scores in --pred with human labels in --human."""
    from llmguard.cli.output import fail
    from llmguard.eval.agree import agreement_report
    from llmguard.eval.items import read_jsonl

    preds = read_jsonl(pred, "predictions")
    labels = read_jsonl(human, "human labels")
    by_keys = [b.strip() for b in by.split(",") if b.strip()] or ["criterion"]
    report = agreement_report(
        preds, labels, by=by_keys, criteria=[c.strip() for c in criteria.split(",")] if criteria else None,
        id_field=id_field, human_id_field=human_id_field, tie_threshold=tie_threshold, resamples=bootstrap, seed=seed,
    )
    report["pred"], report["human"] = str(pred), str(human)
    for cell in report["cells"]:
        for w in cell.get("warnings", []):
            if "variance collapsed" in w or "no prediction" in w:
                warn(f"{_cell_name(cell, by_keys)}: {w}")
    if json_out:
        emit_json(report)
    else:
        _print(report, by_keys)
    if fail_below is not None:
        low = [c for c in report["cells"] if (c.get("metrics") or {}).get("pearson") is not None
               and c["metrics"]["pearson"] < fail_below]
        if low:
            raise fail("Pearson below --fail-below {:g} for {}".format(
                fail_below, ", ".join(_cell_name(c, by_keys) for c in low)), 10)


def _cell_name(cell: dict[str, Any], by: list[str]) -> str:
    return "/".join(str(cell.get(b)) for b in by)


def _fmt(cell: dict[str, Any], key: str, with_ci: bool = True) -> str:
    v = (cell.get("metrics") or {}).get(key)
    if v is None:
        return "-"
    ci = (cell.get("ci95") or {}).get(key) if with_ci else None
    return f"{v:.2f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else "")


def _print(report: dict[str, Any], by: list[str]) -> None:
    from rich.table import Table

    groups = [
        ("Judge vs human: correlation (95% bootstrap CI over items)",
         [("pearson", "Pearson", True), ("spearman", "Spearman", False), ("kendall_tau_b", "Kendall τb", False),
          ("icc2_1_absolute_agreement", "ICC(2,1)", True), ("icc3_1_consistency", "ICC(3,1)", False), ("qwk", "QWK", False)]),
        ("Judge vs human: agreement",
         [("mae", "MAE", False), ("exact", "exact", False), ("within_1", "±1", False),
          ("pairwise_accuracy_without_ties", "pair acc", True), ("pairwise_accuracy_with_ties", "pair acc (ties)", False),
          ("swap_consistency", "swap cons.", False)]),
    ]
    for title, cols in groups:
        present = [c for c in cols if any((cell.get("metrics") or {}).get(c[0]) is not None for cell in report["cells"])]
        table = Table(title=title)
        table.add_column("/".join(by))
        table.add_column("n")
        for _, name, _ci in present:
            table.add_column(name, justify="right")
        for cell in report["cells"]:
            n = f"{cell['n']}" + (f"+{cell['unparsed']}✗" if cell.get("unparsed") else "")
            table.add_row(_cell_name(cell, by), n, *[_fmt(cell, k, ci) for k, _, ci in present])
        stdout.print(table)
    stdout.print("n: scored units (+k✗: records whose judge output did not parse). ICC(2,1): two-way random, "
                 "absolute agreement; ICC(3,1): two-way mixed, consistency (Shrout & Fleiss 1979). --json for all CIs.")
