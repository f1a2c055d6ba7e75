"""Demo step for ``realign nlsr``: realign the LoRA fine-tune (it continues the aligned adapter), then eval safety."""

from __future__ import annotations

from llmguard.testbed.demo import DemoContext, DemoRow, register_step, verb_exists


@register_step("realign-nlsr", order=31, description="realign nlsr on finetuned-lora (defaults), then eval safety",
               available=lambda: verb_exists("realign", "nlsr"))
def nlsr(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    out = ctx.work / "nlsr-finetuned-lora"
    doc = ctx.cli("realign", "nlsr", "--finetuned", tb.finetuned_lora, "--aligned", tb.aligned_lora, "--base", tb.aligned_sft,
                  "--calibration", tb.data["safety_refusal_sft"], "-o", out, "--force", "--device", ctx.device, "--json")
    ev = ctx.eval_safety(out)
    task = ev.get("task") or {}
    return [DemoRow(step=f"realign nlsr ({doc['modules_patched']} modules)", model="finetuned-lora",
                    harmful_rate=ev["harmful_rate"], refusal_rate=ev["refusal_rate"], task=task.get("name"),
                    task_accuracy=task.get("accuracy"), artefact=str(out))]
