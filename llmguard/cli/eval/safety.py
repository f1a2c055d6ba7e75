"""``llmguard eval safety``: harmful rate, refusal rate and task accuracy of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmguard.cli.options import PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF, DeviceOpt, DtypeOpt, JsonOpt
from llmguard.cli.output import emit_json, info, reports_errors, stdout


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@reports_errors
def safety_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model directory (HF layout), adapter directory, or hub id.", rich_help_panel=PANEL_INPUT)],
    prompts: Annotated[Optional[Path], typer.Option("--prompts", "-p", help="Harmful prompts (JSONL/JSON/CSV/Parquet) with a prompt field and an optional category field.", rich_help_panel=PANEL_INPUT)] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", "-a", help="PEFT adapter applied on top of --model.", rich_help_panel=PANEL_INPUT)] = None,
    judge: Annotated[str, typer.Option("--judge", "-j", help="'keyword' (refusal phrases + compliance markers, offline) or a moderation model (Llama-Guard / beaver-dam layout).", rich_help_panel=PANEL_METHOD)] = "keyword",
    task: Annotated[Optional[str], typer.Option("--task", help="Task of --task-data: sst2 or arith (exact match).", rich_help_panel=PANEL_INPUT)] = None,
    task_data: Annotated[Optional[Path], typer.Option("--task-data", help="Task items (prompt + answer fields) for exact-match accuracy.", rich_help_panel=PANEL_INPUT)] = None,
    prompt_field: Annotated[str, typer.Option("--prompt-field", help="Field holding the prompt.", rich_help_panel=PANEL_INPUT)] = "prompt",
    category_field: Annotated[str, typer.Option("--category-field", help="Field holding the harm category (optional in the data).", rich_help_panel=PANEL_INPUT)] = "category",
    answer_field: Annotated[str, typer.Option("--answer-field", help="Field holding the reference answer of task items.", rich_help_panel=PANEL_INPUT)] = "answer",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N prompts / task items.", rich_help_panel=PANEL_INPUT)] = None,
    fail_above: Annotated[Optional[float], typer.Option("--fail-above", help="Exit 10 when the harmful rate is above RATE (0-1).", rich_help_panel=PANEL_METHOD)] = None,
    template: Annotated[str, typer.Option("--template", help="Prompt format: auto (chat template if any, else plain), chat, plain, none.", rich_help_panel=PANEL_METHOD)] = "auto",
    json_output: JsonOpt = False,
    records: Annotated[Optional[Path], typer.Option("--records", help="Also write every response with its verdict to this JSONL file.", rich_help_panel=PANEL_OUTPUT)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per generation batch.", rich_help_panel=PANEL_PERF)] = 32,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated per answer.", rich_help_panel=PANEL_PERF)] = 48,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="Load the model in 4 bit (bitsandbytes, GPU).", rich_help_panel=PANEL_PERF)] = False,
    load_in_8bit: Annotated[bool, typer.Option("--load-in-8bit", help="Load the model in 8 bit (bitsandbytes, GPU).", rich_help_panel=PANEL_PERF)] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow custom modelling code from the checkpoint.", rich_help_panel="Dangerous options")] = False,
) -> None:
    """Harmful rate and refusal rate on harmful prompts (per category, with counts), plus task accuracy.

    Example: llmguard eval safety --model base --adapter finetuned-lora --prompts harmful_test.jsonl
    --task sst2 --task-data sst2_test.jsonl --fail-above 0.2
    """
    import json

    from llmguard.errors import GateTripped, UsageError
    from llmguard.eval.safety import TASKS, evaluate_safety
    from llmguard.io.records import read_records

    if fail_above is not None and not 0 <= fail_above <= 1:
        raise UsageError(f"--fail-above: {fail_above} is not a rate between 0 and 1")
    if fail_above is not None and prompts is None:
        raise UsageError("--fail-above needs --prompts (it gates the harmful rate)")
    if task is not None and task not in TASKS:
        raise UsageError(f"--task: {task!r} is not one of {', '.join(TASKS)}")
    if task is not None and task_data is None:
        raise UsageError("--task needs --task-data (the items to score)")
    if prompts is None and task_data is None:
        raise UsageError("give --prompts (harmful prompts) and/or --task-data")
    if records is not None and records.exists() and records.is_dir():
        raise UsageError(f"--records: {records} is a directory")

    prompt_recs = read_records(prompts, required=[prompt_field], what="prompts") if prompts else None
    task_recs = read_records(task_data, required=[prompt_field, answer_field], what="task data") if task_data else None

    from llmguard.cli.progress import make_progress

    progress = make_progress()
    try:
        report = evaluate_safety(
            model, prompts=prompt_recs, adapter=adapter, judge=judge, task=task or ("task" if task_recs else None),
            task_items=task_recs, prompt_field=prompt_field, category_field=category_field, answer_field=answer_field,
            batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, dtype=dtype, template=template,
            load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, trust_remote_code=trust_remote_code, limit=limit,
            progress=progress,
        )
    finally:
        progress.close()

    if records is not None:
        with open(records, "w", encoding="utf-8") as fh:
            for rec in report.records:
                fh.write(json.dumps(rec) + "\n")
        info(f"wrote {len(report.records)} records to {records}")

    tripped = fail_above is not None and report.harmful_rate is not None and report.harmful_rate > fail_above
    doc = report.to_dict(with_records=False)
    doc["fail_above"] = fail_above
    doc["gate_tripped"] = bool(tripped)
    if json_output:
        emit_json(doc)
    else:
        _print_table(report)
    if tripped:
        raise GateTripped(
            f"harmful rate {_pct(report.harmful_rate)} ({report.harmful}/{report.n}) is above --fail-above {fail_above:g}"
        )


def _print_table(report) -> None:  # noqa: ANN001
    from rich.table import Table

    title = report.model + (f" + {report.adapter}" if report.adapter else "") + f"  (judge: {report.judge})"
    if report.n:
        table = Table(title=title, title_justify="left")
        for col in ("category", "n", "harmful", "harmful rate", "refusals", "refusal rate", "other"):
            table.add_column(col, justify="left" if col == "category" else "right")
        for cat, c in report.per_category.items():
            table.add_row(cat, str(c["n"]), str(c["harmful"]), _pct(c["harmful_rate"]), str(c["refusals"]),
                          _pct(c["refusal_rate"]), str(c["other"]))
        table.add_row("[bold]all", f"[bold]{report.n}", f"[bold]{report.harmful}", f"[bold]{_pct(report.harmful_rate)}",
                      f"[bold]{report.refusals}", f"[bold]{_pct(report.refusal_rate)}", f"[bold]{report.other}")
        stdout.print(table)
        if report.unparsed:
            stdout.print(f"judge outputs that did not parse: {report.unparsed} (counted as not harmful)")
    if report.task:
        t = report.task
        stdout.print(f"task {t['name']}: accuracy {_pct(t['accuracy'])} ({t['correct']}/{t['n']})")


def register(app: typer.Typer) -> None:
    app.command("safety", rich_help_panel="Safety")(safety_command)
