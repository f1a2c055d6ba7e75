"""Demo step for ``realign safelora``: project the LoRA fine-tune onto the alignment subspace of
(aligned − base), threshold 0.5, then eval safety on TEST."""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, before_of, register_step, safety_numbers, verb_exists


@register_step("realign-safelora", order=33, aliases=("safelora",), description="realign safelora (threshold 0.5) on finetuned-lora, then eval safety",
               available=lambda: verb_exists("realign", "safelora"), cost=1.4)
def safelora(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    out = ctx.work / "safelora-finetuned-lora"
    doc = ctx.cli("realign", "safelora", "--aligned", tb.aligned, "--base", tb.base, "--finetuned", tb.finetuned_lora, "-o", out,
                  "--force", "--device", ctx.device, "--json")
    return [DemoRow(step=f"realign safelora ({doc['modules_projected']} of {len(doc['modules'])} modules)", model="finetuned-lora",
                    output=out.name, before=before_of(ctx.input_eval("finetuned-lora")), **safety_numbers(ctx.eval_safety(out)),
                    artefact=str(out))]
