"""Demo step for ``realign somf``: realign the LoRA and the full fine-tune with the defaults (mask
trained with DPO on the held-out-wording realignment preference pairs), then eval safety on TEST."""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, register_step, verb_exists


@register_step("realign-somf", order=32, description="realign somf (defaults) on finetuned-lora and finetuned-full, then eval safety",
               available=lambda: verb_exists("realign", "somf"))
def somf(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    rows = []
    for model, finetuned, aligned in (("finetuned-lora", tb.finetuned_lora, tb.aligned_lora), ("finetuned-full", tb.finetuned_full, tb.aligned)):
        out = ctx.work / f"somf-{model}"
        doc = ctx.cli("realign", "somf", "--aligned", aligned, "--finetuned", finetuned, "--preference", tb.data["realign_preference"],
                      "-o", out, "--force", "--device", ctx.device, "--json")
        ev = ctx.eval_safety(out)
        task = ev.get("task") or {}
        rows.append(DemoRow(step=f"realign somf ({doc['space']} space, kept {doc['mask_density']:.0%})", model=model,
                            harmful_rate=ev["harmful_rate"], refusal_rate=ev["refusal_rate"], task=task.get("name"),
                            task_accuracy=task.get("accuracy"), artefact=str(out)))
    return rows
