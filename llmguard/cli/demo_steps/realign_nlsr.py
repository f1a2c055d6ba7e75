"""Demo step for ``realign nlsr``: realign the LoRA fine-tune (it continues the aligned DPO adapter)
with the defaults and with a setting chosen on DEV by ``--search``, and the full fine-tune with a
DEV search over ΔW weight units, then eval safety on TEST."""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, before_of, register_step, safety_numbers, verb_exists

#: ``--search auto``: the documented DEV grid for each kind of fine-tune (llmguard.realign.nlsr.grid);
#: task DEV data is sst2_dev_wordings (the 52-item sst2_dev missed the LoRA realignment's task loss)
SEARCH_GRID = FULL_SEARCH_GRID = "auto"
_SHORT = {"scorer": "", "alpha": "α=", "mask_ratio": "mask=", "budget": "budget=", "unit": "unit="}


def _row(ctx: DemoContext, label: str, out, patched: int, model: str = "finetuned-lora") -> DemoRow:
    return DemoRow(step=f"realign nlsr {label} ({patched} modules)", model=model, output=out.name,
                   before=before_of(ctx.input_eval(model)), **safety_numbers(ctx.eval_safety(out)), artefact=str(out))


def _searched(ctx: DemoContext, common: list, out, grid: str, model: str) -> list[DemoRow]:
    tb = ctx.testbed
    table = ctx.cli("realign", "nlsr", *common, "-o", out, "--search", grid, "--dev-prompts", tb.data["harmful_dev"],
                    "--dev-task", "sst2", "--dev-task-data", tb.data["sst2_dev_wordings"],
                    "--dev-judge", f"keyword:{tb.data['harmful_content']}")
    if table.get("chosen") is None:  # exit 10: no DEV point kept the task within 5 points
        return []
    chosen = table["points"][table["chosen"]]
    label = "--search: " + " ".join(f"{_SHORT.get(k, k + '=')}{v}" for k, v in chosen["params"].items())
    return [_row(ctx, label, out, chosen["modules_patched"], model)]


@register_step("realign-nlsr", order=31, aliases=("nlsr",), description="realign nlsr on finetuned-lora (defaults, then chosen on DEV) and finetuned-full (chosen on DEV), then eval safety",
               available=lambda: verb_exists("realign", "nlsr"), cost=17,
               parts=("finetuned-lora defaults", "finetuned-lora --search", "finetuned-full --search"))
def nlsr(ctx: DemoContext, part: str) -> list[DemoRow]:
    tb = ctx.testbed

    def inputs(finetuned, aligned) -> list:
        return ["--finetuned", finetuned, "--aligned", aligned, "--base", tb.aligned_sft,
                "--calibration", tb.data["safety_refusal_sft"], "--force", "--device", ctx.device, "--json"]

    lora, full = inputs(tb.finetuned_lora, tb.aligned_lora), inputs(tb.finetuned_full, tb.aligned)
    if part == "finetuned-lora defaults":
        out = ctx.work / "nlsr-finetuned-lora"
        doc = ctx.cli("realign", "nlsr", *lora, "-o", out)
        return [_row(ctx, "defaults", out, doc["modules_patched"])]
    if part == "finetuned-lora --search":
        return _searched(ctx, lora, ctx.work / "nlsr-finetuned-lora-searched", SEARCH_GRID, "finetuned-lora")
    return _searched(ctx, full, ctx.work / "nlsr-finetuned-full-searched", FULL_SEARCH_GRID, "finetuned-full")
