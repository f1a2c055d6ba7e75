"""``llmguard eval agree``: agreement of judge scores with human labels."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llmguard.cli.derive import Extra, verb_command
from llmguard.cli.options import PANEL_OUTPUT
from llmguard.cli.output import emit_json, stdout, warn
from llmguard.eval.agree_options import AgreeOptions


_JSON: Extra = (Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.", rich_help_panel=PANEL_OUTPUT)], False)


def register(app: typer.Typer) -> None:
    verb_command(
        app, "agree", AgreeOptions, extra={"json_out": _JSON},
        help="Agreement of judge results with human labels per criterion: Pearson, Spearman, Kendall tau-b, "
        "ICC(2,1) and ICC(3,1), quadratic-weighted kappa, MAE, exact/±1 agreement, pairwise accuracy with and "
        "without ties, swap consistency, bootstrap 95% CIs over items.",
        epilog="Exit codes: 0 report printed; 2 usage error; 3 unreadable inputs or nothing matched; "
        "10 --fail-below tripped.",
    )(agree_command)


def agree_command(options: AgreeOptions, *, json_out: bool = False) -> None:
    """Compare judge scores in --pred with human labels in --human."""
    from llmguard.cli.output import fail
    from llmguard.eval.agree import run_agree

    report, warnings, gate = run_agree(options)
    for w in warnings:
        warn(w)
    if json_out:
        emit_json(report)
    else:
        _print(report, options.by_keys)
    if gate:
        raise fail(gate, 10)


def _cell_name(cell: dict[str, Any], by: list[str]) -> str:
    from llmguard.eval.agree import cell_name

    return cell_name(cell, by)


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
