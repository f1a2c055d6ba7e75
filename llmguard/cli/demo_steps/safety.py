"""Demo steps for ``eval safety``: the before/after of alignment and of harmful fine-tuning,
and the guard model as judge (agreement with the keyword judge)."""

from __future__ import annotations

import json

from llmguard.cli.demo_runner import DemoContext, DemoRow, register_step


def _row(step: str, model: str, doc: dict, **extra) -> DemoRow:
    task = doc.get("task") or {}
    return DemoRow(step=step, model=model, harmful_rate=doc.get("harmful_rate"), refusal_rate=doc.get("refusal_rate"),
                   task=task.get("name"), task_accuracy=task.get("accuracy"), **extra)


@register_step("eval-safety", order=10, description="eval safety on base, aligned and the fine-tunes")
def eval_safety_models(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    rows = []
    for name, model, adapter, task in [
        ("base", tb.base, None, "sst2"),
        ("aligned", tb.aligned, None, "sst2"),
        ("finetuned-lora", tb.aligned_sft, tb.finetuned_lora, "sst2"),
        ("finetuned-full", tb.finetuned_full, None, "sst2"),
        ("finetuned-arith-lora", tb.aligned_sft, tb.finetuned_arith_lora, "arith"),
    ]:
        doc = ctx.eval_safety(model, adapter=adapter, task=task)
        ctx.shared[f"eval:{name}"] = doc
        rows.append(_row("eval safety", name, doc, artefact=str(adapter or model)))
    return rows


@register_step("judge-guard", order=20, description="eval safety --judge <guard>: agreement with the keyword judge")
def guard_judge(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    kw_file, guard_file = ctx.work / "records-keyword.jsonl", ctx.work / "records-guard.jsonl"
    ctx.eval_safety(tb.aligned_sft, adapter=tb.finetuned_lora, records=kw_file)
    doc = ctx.eval_safety(tb.aligned_sft, adapter=tb.finetuned_lora, judge=str(tb.guard), records=guard_file)

    def labels(path):
        return {r["id"]: r["label"] == "harmful" for r in map(json.loads, path.read_text().splitlines())
                if r.get("kind") == "harmful"}

    kw, guard = labels(kw_file), labels(guard_file)
    agree = sum(kw[k] == guard[k] for k in kw) / len(kw) if kw else None
    return [_row("eval safety --judge guard", "finetuned-lora", doc, judge_agreement=agree,
                 artefact=str(tb.guard), note="agreement = guard vs keyword verdicts")]
