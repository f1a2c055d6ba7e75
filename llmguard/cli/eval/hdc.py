"""``llmguard eval hdc``: HDCEval-style medical judging with three expert judges."""

from __future__ import annotations

from typing import Any

import typer

from llmguard.cli.derive import verb_command
from llmguard.cli.eval.judge_flags import JUDGE_JSON_FLAG
from llmguard.cli.output import emit_json, fail, info, stdout, warn
from llmguard.eval.judge_options import EvalHdcOptions

EXIT_HELP = (
    "Exit codes: 0 every record judged and parsed (or the unparsed share is within --max-unparsed); "
    "1 too many judge outputs did not parse; 2 usage error; 3 some items could not be judged "
    "(missing field, judge that cannot be loaded or is not generative) — the other items are still judged "
    "and every failure is a record with 'parse_status' and 'error'; 4 resource failure (vllm missing, device); "
    "10 --fail-below tripped."
)


def register(app: typer.Typer) -> None:
    verb_command(app, "hdc", EvalHdcOptions, extra={"json_out": JUDGE_JSON_FLAG},
                 help="Score medical answers with HDCEval's three expert judges (REL/PQR, COR/MKC, EXP), "
                 "sub-aspects 0-5 with analyses, single or pairwise; JSONL in, JSONL out, resumable and cached.",
                 epilog=EXIT_HELP)(hdc_command)


def hdc_command(options: EvalHdcOptions, *, json_out: bool = False) -> None:
    """Judge ITEMS with the HDC experts and write one record per (item, aspect) to OUTPUT."""
    from llmguard.cli.progress import make_progress
    from llmguard.eval.hdc import HdcProtocol
    from llmguard.eval.judge_run import run_judges

    run = run_judges(HdcProtocol.prepare(options), make_progress(), info=info, warn=warn)
    _print_summary(run.summary, json_out)
    if run.exit_code:
        raise fail(run.message or "failures", run.exit_code)


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
