"""``llmguard testbed ...``: build the tiny real models and data used by the demo and the tests."""

from __future__ import annotations

import typer

from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.cli.output import emit_json, info, stdout
from llmguard.testbed.options import TestbedBuildOptions, TestbedWatermarkOptions

app = typer.Typer(help="Build the testbed: tiny real Llama checkpoints and synthetic safety/task data.",
                  no_args_is_help=True)


@verb_command(app, "build", TestbedBuildOptions, extra={"json_output": JSON_FLAG})
def build_command(options: TestbedBuildOptions, *, json_output: bool = False) -> None:
    """Build the testbed once (a few minutes on 2 CPU cores), or print where the cached one is: the Llama
    checkpoints and data, the watermark testbed, the tiny HDC judge and the tiny LLaVA.

    Example: llmguard testbed build --json
    """
    import time

    from llmguard.cli.progress import make_progress
    from llmguard.testbed import build

    t0 = time.perf_counter()
    progress = make_progress()
    try:
        tb = build(options.out, seed=options.seed, force=options.force, progress=progress)
        extras = _extras(options.seed, progress)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    doc = tb.to_dict()
    doc["extras"] = extras
    doc["elapsed_s"] = round(elapsed, 2)
    if json_output:
        emit_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"testbed v{tb.version} seed {tb.seed}: {tb.root}", title_justify="left")
    table.add_column("artefact", style="bold")
    table.add_column("path", overflow="fold")
    for name, path in tb.models().items():
        table.add_row(name, str(path))
    table.add_row("tokenizer", str(tb.tokenizer))
    table.add_row("data", f"{tb.root / 'data'} ({len(tb.data)} files)")
    table.add_row("watermark testbed", extras["watermark"]["root"])
    table.add_row("tiny HDC judge", extras["tiny_hdc_judge"])
    table.add_row("tiny LLaVA", extras["tiny_llava"])
    stdout.print(table)
    built = doc["timings_s"].get("total")
    info(f"built in {built:.0f} s" if built is not None and elapsed > 1 else f"reused (ready in {elapsed:.1f} s)")


def _extras(seed: int, progress) -> dict:
    """The artefacts built beside the Llama testbed (cached separately, shared by every seed of
    it): the watermark testbed of ``seed``, the tiny HDC judge, the tiny LLaVA-layout judge."""
    from llmguard.testbed import judge as tj
    from llmguard.testbed import watermark as tw

    progress.stage("watermark testbed")
    wm = tw.build(seed=seed)
    progress.stage("tiny HDC judge")
    hdc = tj.tiny_judge_path()
    progress.stage("tiny LLaVA")
    llava = tj.tiny_llava_path()
    return {"watermark": {name: str(getattr(wm, name)) for name in (
                "root", "tokenizer", "base", "student", "reference", "prompts", "teacher_data", "teacher_sft", "plain_sft",
                "clean_text")},
            "tiny_hdc_judge": str(hdc), "tiny_llava": str(llava)}


@verb_command(app, "watermark", TestbedWatermarkOptions, extra={"json_output": JSON_FLAG})
def watermark_command(options: TestbedWatermarkOptions, *, json_output: bool = False) -> None:
    """Build (or reuse) the watermark testbed: KGW teacher data, base, radioactive student, weak reference.

    Example: llmguard testbed watermark --seed 1 --commands runs/ > attacks.sh && sh attacks.sh
    """
    import shlex
    import sys

    from llmguard.cli.progress import make_progress
    from llmguard.testbed import watermark as tw

    progress = make_progress()
    try:
        tb = tw.build(seed=options.seed, force=options.force, progress=progress)
    finally:
        progress.close()
    seed, commands = options.seed, options.commands
    if commands is not None:
        sys.stdout.write(shlex.join(["mkdir", "-p", str(commands)]) + "\n")
        for name, mode, weak in (("scrub", "scrub", False), ("spoof", "spoof", False), ("spoof-weak", "spoof", True)):
            argv = ["llmguard", "watermark", *tb.attack_args(mode, weak=weak), "-o", str(commands / f"seed{seed}-{name}"),
                    "--json"]
            sys.stdout.write(shlex.join(argv) + f" > {shlex.quote(str(commands / f'seed{seed}-{name}.json'))}\n")
        return
    doc = {"root": str(tb.root), "seed": seed, "base": str(tb.base), "student": str(tb.student),
           "reference": str(tb.reference), "tokenizer": str(tb.tokenizer), "median_z": tb.info["median_z"],
           "perplexity": tb.info["perplexity"], "timings_s": tb.info["timings_s"]}
    if json_output:
        emit_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"watermark testbed v{tw.VERSION} seed {seed}: {tb.root}", title_justify="left")
    for col in ("model", "median z", "clean perplexity", "path"):
        table.add_column(col)
    for label, z in tw.summary_rows(tb):
        key = {"base (plain pretraining)": "base", "student (distilled)": "student", "reference (diluted)": "reference"}.get(label)
        path = str(getattr(tb, key)) if key else ""
        ppl = f"{tb.info['perplexity'][key]:.1f}" if key else ""
        table.add_row(label, f"{z:.2f}", ppl, path)
    stdout.print(table)
