"""Demo step for ``eval hdc`` + ``eval agree``: the testbed's tiny HDC judge scores held-out
answers whose quality is known by construction; the row shows its agreement with those labels."""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, register_step, verb_exists


@register_step("judge-hdc", order=60, aliases=("hdc",), description="eval hdc with the tiny judge, eval agree against the known labels",
               available=lambda: verb_exists("eval", "hdc") and verb_exists("eval", "agree"), needs_testbed=False,
               cost=6)
def judge_hdc(ctx: DemoContext) -> list[DemoRow]:
    from llmguard.testbed import judge as tj

    judge = tj.tiny_judge_path()
    items = tj.judge_items(48)
    items_file = tj.write_items(items, ctx.work / "hdc-items.jsonl")
    labels_file = tj.write_labels(items, ctx.work / "hdc-labels.jsonl")
    out = ctx.work / "hdc-results.jsonl"
    summary = ctx.cli("eval", "hdc", items_file, "--judge", judge, "-o", out, "--force", "--json",
                      "--max-new-tokens", "64", "--batch-size", "16", "--device", ctx.device,
                      "--cache", ctx.work / "hdc-cache.sqlite")
    report = ctx.cli("eval", "agree", "--pred", out, "--human", labels_file, "--json", "--bootstrap", "200",
                     "--criteria", "REL,COR,EXP")
    cells = {c["criterion"]: c for c in report["cells"]}
    pearson = {k: (cells.get(k, {}).get("metrics") or {}).get("pearson") for k in ("REL", "COR", "EXP")}
    known = [v for v in pearson.values() if v is not None]
    parsed = sum(a["parsed"] for a in summary["aspects"].values())
    total = sum(a["records"] for a in summary["aspects"].values())
    note = "Pearson vs known labels: " + ", ".join(
        f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in pearson.items()) + f"; parsed {parsed}/{total}"
    return [DemoRow(step="eval hdc + agree", model="tiny-hdc-judge",
                    judge_vs_labels_r=round(sum(known) / len(known), 4) if known else None,
                    artefact=str(out), note=note, ok=bool(known) and parsed == total)]
