"""Demo step for ``watermark generate`` + ``watermark detect``: radioactivity on the watermark testbed.

The teacher (a bigram language with a KGW watermark) wrote the student's training data; the
reference saw a diluted mix. Plain sampling from each student, detected with the teacher's key,
shows the inherited watermark (student z high, reference weaker, teacher's own text highest).
"""

from __future__ import annotations

from llmguard.cli.demo_runner import DemoContext, DemoRow, StepFailed, register_step, verb_exists


def _num(value: float | None, spec: str = ".1f") -> str:
    """A statistic for the note; ``-`` where the test had nothing to score (e.g. the pooled test of
    the teacher's own corpus, whose every window also occurs in a prompt and is excluded)."""
    return "-" if value is None else format(value, spec)


def _aggregate(doc: dict) -> dict:
    if not doc.get("aggregate"):
        raise StepFailed("`llmguard watermark detect --aggregate` printed no corpus record")
    return doc["aggregate"]


@register_step("watermark-radioactivity", order=70, aliases=("radioactivity", "watermark"),
               description="watermark generate from the distilled students, watermark detect with the teacher's key",
               available=lambda: verb_exists("watermark", "detect") and verb_exists("watermark", "generate"), needs_testbed=False,
               cost=3)
def watermark_radioactivity(ctx: DemoContext) -> list[DemoRow]:
    from llmguard.testbed import watermark as tw

    tb = tw.build()
    # --skip-bad: a student may answer a prompt with nothing at all (an immediate EOS); that text has
    # no tokens to score, so it is skipped with a warning instead of failing the whole step
    detect = ["watermark", "detect", "--json", "--aggregate", "--skip-bad", "--prompt-field", "prompt", *tb.detect_args()]
    rows: list[DemoRow] = []
    teacher = _aggregate(ctx.cli(*detect, tb.teacher_data))
    rows.append(DemoRow(step="watermark detect", model="wm-teacher (bigram + KGW)", watermark_z=round(teacher["median_z"], 2),
                        artefact=str(tb.teacher_data),
                        note=f"pooled z {_num(teacher['pooled']['z'])} over {teacher['num_texts']} texts"))
    for name, path in (("wm-student", tb.student), ("wm-reference", tb.reference)):
        out = ctx.work / f"watermark-{name}.jsonl"
        ctx.cli("watermark", "generate", "--model", path, "--prompts", tb.prompts, "-o", out, "--force",
                "--no-watermark", "--max-new-tokens", "48", "--batch-size", "16", "--seed", "0",
                "--device", ctx.device, json_output=False)
        agg = _aggregate(ctx.cli(*detect, out))
        rows.append(DemoRow(step="watermark generate + detect", model=name, watermark_z=round(agg["median_z"], 2),
                            artefact=str(out),
                            note=f"pooled z {_num(agg['pooled']['z'])}, log10 p {_num(agg['pooled']['log10_p'])}; "
                                 f"{'watermarked' if agg['prediction'] else 'not watermarked'} at z>4"))
    return rows


#: the three attacks of the step: (label, mode, from the weak student)
ATTACKS = {"scrub": ("scrub", False), "spoof": ("spoof", False), "spoof (weak student)": ("spoof", True)}


@register_step("watermark-attacks", order=71, aliases=("attacks",),
               description="watermark scrub and spoof (CDG-KD) on the watermark testbed: contrastive data, distil, detect",
               available=lambda: verb_exists("watermark", "scrub") and verb_exists("watermark", "spoof"), needs_testbed=False,
               cost=48, parts=tuple(ATTACKS))
def watermark_attacks(ctx: DemoContext, label: str) -> list[DemoRow]:
    from llmguard.testbed import watermark as tw

    tb = tw.build()
    mode, weak = ATTACKS[label]
    out = ctx.work / f"watermark-{mode}{'-weak' if weak else ''}"
    # the attack's result is reused when the identical command ran before (llmguard.cli.demo_cache):
    # the note says so, `llmguard demo --fresh` runs it again
    doc, reused = ctx.cli_reusable("watermark", *tb.attack_args(mode, weak=weak), "-o", out, "--force", "--json", output=out)
    new = doc["models"][mode]
    before = doc["models"]["student"]
    return [DemoRow(
        step=f"watermark {label}", model="wm-student (weak)" if weak else "wm-student", output=f"{out.name}/student",
        watermark_z=round(new["median_z"], 2), before={"watermark_z": round(before["median_z"], 2)},
        artefact=str(out / "student"),
        note=f"two-sided median p {new['median_p_two_sided']:.2g}; clean-text perplexity "
             f"x{new['perplexity_vs_student']:.2f} of the input student's"
             + (f"; reused: the stored result of this identical command (key {reused[:12]}; --fresh reruns it)" if reused else ""))]
