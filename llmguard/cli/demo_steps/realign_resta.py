"""Demo step for ``realign resta``: add the safety vector (aligned - base) back to the full fine-tune."""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, before_of, register_step, safety_numbers, verb_exists

GAMMA = 0.5


@register_step("realign-resta", order=30, aliases=("resta",), description="realign resta on finetuned-full, then eval safety",
               available=lambda: verb_exists("realign", "resta"), cost=1.3)
def resta(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    out = ctx.work / "resta-finetuned-full"
    ctx.cli("realign", "resta", "--finetuned", tb.finetuned_full, "--aligned", tb.aligned, "--unaligned", tb.base,
            "--gamma", GAMMA, "-o", out, "--force", "--device", ctx.device, "--json")
    return [DemoRow(step=f"realign resta (γ={GAMMA})", model="finetuned-full", output=out.name,
                    before=before_of(ctx.input_eval("finetuned-full")), **safety_numbers(ctx.eval_safety(out)),
                    artefact=str(out))]
