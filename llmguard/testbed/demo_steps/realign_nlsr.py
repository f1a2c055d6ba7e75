"""Demo step for ``realign nlsr``: realign the LoRA fine-tune (it continues the aligned DPO adapter)
with the defaults and with a setting chosen on DEV by ``--search``, then eval safety on TEST."""

from __future__ import annotations

from llmguard.testbed.demo import DemoContext, DemoRow, register_step, verb_exists

#: the DEV grid of docs/realign.md (eight points, about 20 s on a laptop CPU)
SEARCH_GRID = "scorer=actsvd,wanda;alpha=0.5,0.9;mask-ratio=0.2,0.3"


def _row(ctx: DemoContext, label: str, out, patched: int) -> DemoRow:
    ev = ctx.eval_safety(out)
    task = ev.get("task") or {}
    return DemoRow(step=f"realign nlsr {label} ({patched} modules)", model="finetuned-lora", harmful_rate=ev["harmful_rate"],
                   refusal_rate=ev["refusal_rate"], task=task.get("name"), task_accuracy=task.get("accuracy"), artefact=str(out))


@register_step("realign-nlsr", order=31, description="realign nlsr on finetuned-lora (defaults, then chosen on DEV), then eval safety",
               available=lambda: verb_exists("realign", "nlsr"))
def nlsr(ctx: DemoContext) -> list[DemoRow]:
    tb = ctx.testbed
    common = ["--finetuned", tb.finetuned_lora, "--aligned", tb.aligned_lora, "--base", tb.aligned_sft,
              "--calibration", tb.data["safety_refusal_sft"], "--force", "--device", ctx.device, "--json"]
    out = ctx.work / "nlsr-finetuned-lora"
    doc = ctx.cli("realign", "nlsr", *common, "-o", out)
    rows = [_row(ctx, "defaults", out, doc["modules_patched"])]
    searched = ctx.work / "nlsr-finetuned-lora-searched"
    table = ctx.cli("realign", "nlsr", *common, "-o", searched, "--search", SEARCH_GRID, "--dev-prompts", tb.data["harmful_dev"],
                    "--dev-task", "sst2", "--dev-task-data", tb.data["sst2_dev"])
    if table.get("chosen") is not None:  # exit 10: no DEV point kept the task within 5 points
        chosen = table["points"][table["chosen"]]
        short = {"scorer": "", "alpha": "α=", "mask_ratio": "mask=", "budget": "budget="}
        label = "--search: " + " ".join(f"{short.get(k, k + '=')}{v}" for k, v in chosen["params"].items())
        rows.append(_row(ctx, label, searched, chosen["modules_patched"]))
    return rows
