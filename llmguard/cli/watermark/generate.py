"""``llmguard watermark generate``: batched (watermarked or plain) generation to JSONL."""

from __future__ import annotations

import typer

from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.watermark.options import GenerateOptions


def register(app: typer.Typer) -> None:
    verb_command(app, "generate", GenerateOptions, panel="Verbs", extra={"json_output": JSON_FLAG})(generate_command)


def generate_command(options: GenerateOptions, *, json_output: bool = False) -> None:
    """Generate watermarked (or plain) continuations for prompts; the prompt is stripped from every output."""
    from llmguard.cli.output import emit_json, info, warn
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.generation import generate_jsonl

    progress = make_progress()
    try:
        result = generate_jsonl(options, progress, on_warning=warn)
    finally:
        progress.close()
    if json_output:  # the records are in OUT; stdout gets what was written and with which watermark
        emit_json({"output": result.output, "records": result.records, "watermark": result.watermark,
                   "seconds": round(result.seconds, 2), "warnings": result.warnings})
    info(f"wrote {result.records} record(s) to {result.output} in {result.seconds:.1f}s")
