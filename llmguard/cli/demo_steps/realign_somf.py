"""Demo step for ``realign somf``: realign the LoRA and the full fine-tune with the documented
protocol (the defaults: mask trained with DPO on the held-out-wording realignment preference
pairs, plus the fine-tune's own training pairs as ``--task-data``), then eval safety on TEST."""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, before_of, register_step, safety_numbers, verb_exists


@register_step("realign-somf", order=32, aliases=("somf",), description="realign somf (defaults + task data) on finetuned-lora and finetuned-full, then eval safety",
               available=lambda: verb_exists("realign", "somf"), cost=64, parts=("finetuned-lora", "finetuned-full"))
def somf(ctx: DemoContext, model: str) -> list[DemoRow]:
    tb = ctx.testbed
    finetuned, aligned = {"finetuned-lora": (tb.finetuned_lora, tb.aligned_lora), "finetuned-full": (tb.finetuned_full, tb.aligned)}[model]
    out = ctx.work / f"somf-{model}"
    doc = ctx.cli("realign", "somf", "--aligned", aligned, "--finetuned", finetuned, "--preference", tb.data["realign_preference"],
                  "--task-data", tb.data["sst2_train"], "--task-response-field", "answer",
                  "-o", out, "--force", "--device", ctx.device, "--json")
    return [DemoRow(step=f"realign somf +task data ({doc['space']} space, kept {doc['mask_density']:.0%})", model=model,
                    output=out.name, before=before_of(ctx.input_eval(model)), **safety_numbers(ctx.eval_safety(out)),
                    artefact=str(out))]
