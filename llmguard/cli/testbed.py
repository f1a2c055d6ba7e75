"""``llmguard testbed ...``: build the tiny real models and data used by the demo and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmguard.cli.options import PANEL_OUTPUT, JsonOpt
from llmguard.cli.output import emit_json, info, reports_errors, stdout

app = typer.Typer(help="Build the testbed: tiny real Llama checkpoints and synthetic safety/task data.",
                  no_args_is_help=True)


@app.command("build")
@reports_errors
def build_command(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory to build into (default: $LLMGUARD_CACHE/testbed/v<version>-seed<N>).", rich_help_panel=PANEL_OUTPUT)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data and the training runs.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a complete testbed is there.", rich_help_panel="Dangerous options")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Build the testbed once (about 2 minutes on 2 CPU cores), or print where the cached one is.

    Example: llmguard testbed build --json
    """
    import time

    from llmguard.cli.progress import make_progress
    from llmguard.testbed import build

    t0 = time.perf_counter()
    progress = make_progress()
    try:
        tb = build(out, seed=seed, force=force, progress=progress)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    doc = tb.to_dict()
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
    stdout.print(table)
    built = doc["timings_s"].get("total")
    info(f"built in {built:.0f} s" if built is not None and elapsed > 1 else f"reused (ready in {elapsed:.1f} s)")


@app.command("watermark")
@reports_errors
def watermark_command(
    seed: Annotated[int, typer.Option("--seed", help="Seed of the teacher language, data and training runs.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a complete build is there.", rich_help_panel="Dangerous options")] = False,
    commands: Annotated[Optional[Path], typer.Option("--commands", help="Print the scrub / spoof / weak-spoof command lines (outputs under this directory) instead of the table.", rich_help_panel=PANEL_OUTPUT)] = None,
    json_output: JsonOpt = False,
) -> None:
    """Build (or reuse) the watermark testbed: KGW teacher data, base, radioactive student, weak reference.

    Example: llmguard testbed watermark --seed 1 --commands runs/ > attacks.sh && sh attacks.sh
    """
    import shlex
    import sys

    from llmguard.cli.progress import make_progress
    from llmguard.testbed import watermark as tw

    progress = make_progress()
    try:
        tb = tw.build(seed=seed, force=force, progress=progress)
    finally:
        progress.close()
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
