"""``llmguard watermark generate``: batched (watermarked or plain) generation to JSONL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmguard.cli.options import PANEL_DANGER, PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF
from llmguard.cli.output import reports_errors
from llmguard.cli.watermark.common import (
    ContextWidthOpt,
    DeltaOpt,
    GammaOpt,
    KeyOpt,
    ProfileOpt,
    RngDeviceOpt,
    SchemeOpt,
    SeedingOpt,
    check_combo,
    vocab_opt,
)


def register(app: typer.Typer) -> None:
    app.command("generate", rich_help_panel="Verbs")(generate)


@reports_errors
def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="Model directory (HF layout) or hub id.", rich_help_panel=PANEL_INPUT)],
    prompts: Annotated[Path, typer.Option("--prompts", "-p", help="JSONL/JSON prompts (or plain text, one per line).", rich_help_panel=PANEL_INPUT)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL (written atomically).", rich_help_panel=PANEL_OUTPUT)],
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="PEFT adapter directory.", rich_help_panel=PANEL_INPUT)] = None,
    prompt_field: Annotated[str, typer.Option("--prompt-field", help="JSON field with the prompt.", rich_help_panel=PANEL_INPUT)] = "prompt",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed prompt records (warned).", rich_help_panel=PANEL_INPUT)] = False,
    template: Annotated[
        str,
        typer.Option("--template", help="Prompt formatting: none (as given), auto (chat template if any), plain, chat.", rich_help_panel=PANEL_INPUT),
    ] = "none",
    scheme: SchemeOpt = "kgw",
    profile: ProfileOpt = None,
    seeding: SeedingOpt = None,
    gamma: GammaOpt = None,
    delta: DeltaOpt = None,
    key: KeyOpt = None,
    context_width: ContextWidthOpt = None,
    vocab_size: Annotated[str, vocab_opt("auto")] = "auto",
    rng_device: RngDeviceOpt = "cpu",
    no_watermark: Annotated[bool, typer.Option("--no-watermark", help="Plain generation (the control).", rich_help_panel="Watermark")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="New tokens per prompt.", rich_help_panel=PANEL_METHOD)] = 64,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Multinomial sampling (default) or greedy.", rich_help_panel=PANEL_METHOD)] = True,
    temperature: Annotated[float, typer.Option("--temperature", rich_help_panel=PANEL_METHOD)] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", rich_help_panel=PANEL_METHOD)] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (recorded).", rich_help_panel=PANEL_METHOD)] = 0,
    fmt: Annotated[str, typer.Option("--format", help="plain (prompt/text records) or sft (instruction/input/output).", rich_help_panel=PANEL_OUTPUT)] = "plain",
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=PANEL_PERF)] = 16,
    device: Annotated[str, typer.Option("--device", envvar="LLMGUARD_DEVICE", help="auto, cpu, cuda or cuda:N.", rich_help_panel=PANEL_PERF)] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.", rich_help_panel=PANEL_PERF)] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.", rich_help_panel=PANEL_DANGER)] = False,
) -> None:
    """Generate watermarked (or plain) continuations for prompts; the prompt is stripped from every output."""
    from llmguard.errors import InvalidInputError, UsageError

    if not no_watermark:
        check_combo(scheme, profile)
    if fmt not in ("plain", "sft"):
        raise UsageError(f"--format must be plain or sft, got {fmt!r}")
    if template not in ("none", "auto", "plain", "chat"):
        raise UsageError(f"--template must be none, auto, plain or chat, got {template!r}")
    if output.exists() and not force:
        raise UsageError(f"{output} exists; pass --force to replace it")
    if output.exists() and output.is_dir():
        raise UsageError(f"{output} is a directory")
    if temperature <= 0:
        raise UsageError("--temperature must be positive")
    if not 0 < top_p <= 1:
        raise UsageError("--top-p must be in (0, 1]")

    from llmguard.cli.output import info, warn
    from llmguard.cli.progress import make_progress
    from llmguard.watermark.data import read_records

    if not prompts.exists():
        raise InvalidInputError(f"{prompts}: no such file")
    from llmguard.watermark.data import read_source

    head = read_source(str(prompts)).lstrip()[:1]
    if prompts.suffix.lower() not in (".jsonl", ".json") and head not in ("{", "["):
        # plain text: one prompt per non-empty line
        lines = [ln for ln in read_source(str(prompts)).splitlines() if ln.strip()]
        if not lines:
            raise InvalidInputError(f"{prompts}: no prompts")
        prompt_texts = lines
        metas = [{} for _ in lines]
    else:
        read = read_records(str(prompts), text_field=prompt_field, skip_bad=skip_bad)
        prompt_texts = [r.text for r in read.records]
        metas = [r.meta for r in read.records]
        for msg in read.skipped:
            warn(f"skipped {msg}")

    from llmguard.inference import generate as run_generate
    from llmguard.inference import load_causal_lm
    from llmguard.io.manifest import Manifest

    manifest = Manifest(verb="watermark generate")
    manifest.add_input("prompts", prompts)
    with manifest.stage("load"):
        lm, tokenizer = load_causal_lm(model, adapter=adapter, device=device, dtype=dtype)

    processor = None
    wm_config = None
    if not no_watermark:
        from llmguard.watermark.detect import resolve_vocab_size
        from llmguard.watermark.processor import WatermarkLogitsProcessor
        from llmguard.watermark.schemes import SchemeParams, build_scheme

        model_dir = model if Path(model).is_dir() else None
        if vocab_size == "auto":
            from llmguard.watermark.schemes import DEFAULT_PROFILE

            prof = (profile or DEFAULT_PROFILE[scheme.lower()]).lower()
            vocab_size = "model" if prof == "hf" else "tokenizer"
        if vocab_size == "model" and model_dir is None:
            vsize, vsource, vwarn = int(lm.config.get_text_config().vocab_size), "model", []
        else:
            vsize, vsource, vwarn = resolve_vocab_size(vocab_size, tokenizer, model_dir)
        for w in vwarn:
            warn(w)
        sch = build_scheme(
            scheme, profile,
            SchemeParams(vocab_size=vsize, gamma=gamma, delta=delta, key=key, seeding=seeding,
                         context_width=context_width, rng_device=rng_device),
        )
        if sch.profile == "markllm" and getattr(sch, "window_scheme", "") == "self" and vsize > 4096:
            warn(f"MarkLLM self-window generation computes up to {vsize} permutations per distinct context (slow)")
        processor = WatermarkLogitsProcessor(sch)
        wm_config = {**sch.config(), "vocab_source": vsource}

    sampling = {
        "do_sample": sample,
        "temperature": temperature if sample else None,
        "top_p": top_p if sample else None,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "batch_size": batch_size,
        "template": template,
    }
    progress = make_progress()
    t0 = time.perf_counter()
    try:
        with manifest.stage("generate") as st:
            texts = run_generate(
                lm, tokenizer, prompt_texts,
                max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=sample,
                temperature=temperature, top_p=top_p, seed=seed, logits_processor=processor,
                progress=progress, template=None if template == "none" else template,
            )
            st["prompts"] = len(prompt_texts)
    finally:
        progress.close()

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.llmguard-tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p, t, meta in zip(prompt_texts, texts, metas):
            if fmt == "sft":
                rec = {"instruction": p, "input": "", "output": t, **meta}
            else:
                rec = {**meta, "prompt": p, "text": t, "watermark": wm_config, "sampling": sampling, "model": model}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(output)
    manifest.parameters = {
        "model": model, "adapter": adapter, "prompts": str(prompts), "output": str(output), "format": fmt,
        "watermark": wm_config, "sampling": sampling, "prompt_field": prompt_field,
    }
    side = output.with_name(output.name + ".llmguard.json")
    side.write_text(json.dumps(manifest.to_dict(), indent=2, default=str) + "\n")
    info(f"wrote {len(texts)} record(s) to {output} in {time.perf_counter() - t0:.1f}s")
