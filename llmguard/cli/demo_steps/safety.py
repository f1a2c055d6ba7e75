"""Demo steps for ``eval safety``: the before/after of alignment and of harmful fine-tuning,
and the guard model as judge (agreement with the keyword judge)."""

from __future__ import annotations

import json

from llmguard.cli.demo_runner import EVAL_INPUTS, DemoContext, DemoRow, register_step, safety_numbers


def _row(step: str, model: str, doc: dict, **extra) -> DemoRow:
    return DemoRow(step=step, model=model, **safety_numbers(doc), **extra)


@register_step("eval-safety", order=10, aliases=("safety",), description="eval safety on base, aligned and the fine-tunes",
               cost=9, parts=tuple(EVAL_INPUTS))
def eval_safety_models(ctx: DemoContext, name: str) -> list[DemoRow]:
    model, adapter, _ = EVAL_INPUTS[name](ctx.testbed)
    return [_row("eval safety", name, ctx.input_eval(name), artefact=str(adapter or model))]


@register_step("judge-guard", order=20, aliases=("guard",), description="eval safety --judge <guard>: agreement with the keyword judge",
               cost=3)
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
    return [_row("eval safety --judge guard", "finetuned-lora", doc, guard_vs_keyword=agree,
                 artefact=str(tb.guard), note="harmful/refusal as judged by the guard model; agree = share of "
                                              "harmful-prompt verdicts where guard and keyword judge agree")]
