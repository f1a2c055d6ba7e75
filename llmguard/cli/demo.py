"""``llmguard demo``: build or reuse the testbed, run every available verb on it, print one table."""

from __future__ import annotations

from typing import Annotated

import typer

from llmguard.cli.demo_runner import DemoOptions
from llmguard.cli.derive import JSON_FLAG, Extra, verb_command
from llmguard.cli.output import emit_json, info, stdout, warn


_LIST: Extra = (Annotated[bool, typer.Option("--list", help="List the registered steps and exit.")], False)


def demo_command(options: DemoOptions, *, list_steps: bool = False, json_output: bool = False) -> None:
    """Build the testbed (once, cached) and run the verbs end to end: one before/after table.

    Example: llmguard demo
    """
    from llmguard.cli.demo_runner import default_jobs, load_steps, run_demo

    if list_steps:
        listed = [{"name": name, "aliases": list(step.aliases), "description": step.description,
                   "available": step.available is None or step.available()} for name, step in load_steps().items()]
        if json_output:
            emit_json({"steps": listed})
            return
        for s in listed:
            alias = f" ({', '.join(s['aliases'])})" if s["aliases"] else ""
            stdout.print(f"{s['name'] + alias:32s} {s['description']}{'' if s['available'] else '  (verb not available)'}")
        return
    from llmguard.cli.progress import make_progress

    # the display's console writes to this terminal's stderr: the verbs the demo runs in-process
    # get their stdout and stderr captured, the display must not be captured with them
    progress = make_progress(pinned=True)
    try:
        result = run_demo(seed=options.seed, testbed_dir=options.testbed, work=options.out, device=options.device, only=options.only,
                          progress=progress, isolated=options.isolated, jobs=options.jobs or default_jobs(), fresh=options.fresh)
    finally:
        progress.close()
    if json_output:
        emit_json(result.to_dict())
    else:
        from llmguard.cli.demo_table import render

        # the table is plain text laid out for the terminal's width (80 columns fit); piped
        # output, which has no width, gets the width its longest label needs (nothing wraps)
        stdout.print(f"llmguard demo: before → after on the testbed (held-out TEST split), {result.seconds:.0f} s",
                     markup=False, highlight=False)
        stdout.print(render(result, width=stdout.width if stdout.is_terminal else None), markup=False, highlight=False,
                     soft_wrap=True)
        for r in result.rows:
            if not r.ok:
                stdout.print(f"failed {r.step}: {r.note}", markup=False, soft_wrap=True)
        for name, why in result.skipped.items():
            stdout.print(f"skipped {name}: {why}", markup=False, soft_wrap=True)
        stdout.print(f"testbed: {result.testbed_root}", markup=False, soft_wrap=True)
        stdout.print(f"demo artefacts: {result.work}", markup=False, soft_wrap=True)
        info(f"demo finished in {result.seconds:.0f} s")
    if not result.ok:
        warn("some demo steps failed (see the table)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    verb_command(app, "demo", DemoOptions, panel="Top level", extra={"list_steps": _LIST, "json_output": JSON_FLAG})(demo_command)
