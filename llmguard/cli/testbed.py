"""``llmguard testbed ...``: build the tiny real models and data used by the demo and the tests."""

from __future__ import annotations

import typer

from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.cli.output import emit_json, info, stdout
from llmguard.testbed.options import TestbedBuildOptions

app = typer.Typer(help="Build the testbed: tiny real Llama checkpoints and synthetic safety/task data.",
                  no_args_is_help=True)


@verb_command(app, "build", TestbedBuildOptions, extra={"json_output": JSON_FLAG})
def build_command(options: TestbedBuildOptions, *, json_output: bool = False) -> None:
    """Build the testbed once (about 2 minutes on 2 CPU cores), or print where the cached one is.

    Example: llmguard testbed build --json
    """
    import time

    from llmguard.cli.progress import make_progress
    from llmguard.testbed import build

    t0 = time.perf_counter()
    progress = make_progress()
    try:
        tb = build(options.out, seed=options.seed, force=options.force, progress=progress)
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
