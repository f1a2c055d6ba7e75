"""``watermark generate`` as a function: prompts in, (watermarked) continuations out, as JSONL.

The output file is written atomically, with a manifest beside it (``OUT.llmguard.json``); the
prompt is stripped from every continuation. Finished batches are kept beside OUT while the run goes
on, so an interrupted run continues with ``--resume`` (:mod:`llmguard.watermark.generation_resume`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmguard.errors import InvalidInputError
from llmguard.progress import NullProgress, Progress, Warnings
from llmguard.watermark.options import GenerateOptions


@dataclass
class GenerationResult:
    output: Path
    records: int
    watermark: dict[str, Any] | None
    manifest: dict[str, Any]
    seconds: float  # generation and writing, after the model was loaded
    warnings: list[str] = field(default_factory=list)


def read_prompts(options: GenerateOptions, warn: Callable[[str], None]) -> tuple[list[str], list[dict[str, Any]]]:
    """The prompts and their id metadata: JSONL/JSON records, or plain text one prompt per line."""
    from llmguard.watermark.data import read_source, read_texts

    path = options.prompts
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    content = read_source(str(path))
    if path.suffix.lower() not in (".jsonl", ".json") and content.lstrip()[:1] not in ("{", "["):
        lines = [ln for ln in content.splitlines() if ln.strip()]
        if not lines:
            raise InvalidInputError(f"{path}: no prompts")
        return lines, [{} for _ in lines]
    read = read_texts(str(path), text_field=options.prompt_field, skip_bad=options.skip_bad)
    for msg in read.skipped:
        warn(f"skipped {msg}")
    return [r.text for r in read.records], [r.meta for r in read.records]


def _processor(options: GenerateOptions, lm: Any, tokenizer: Any, warn: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    """The watermark logits processor and its config (None, None for --no-watermark)."""
    if options.no_watermark:
        return None, None
    from llmguard.watermark.detect import resolve_vocab_size
    from llmguard.watermark.processor import WatermarkLogitsProcessor
    from llmguard.watermark.schemes import build_scheme

    model_dir = options.model if Path(options.model).is_dir() else None
    source = options.vocab_source(has_model=True)
    if source == "model" and model_dir is None:  # a hub model: its loaded config has the vocab size
        vsize, vsource, vwarn = int(lm.config.get_text_config().vocab_size), "model", []
    else:
        vsize, vsource, vwarn = resolve_vocab_size(source, tokenizer, model_dir)
    for w in vwarn:
        warn(w)
    sch = build_scheme(options.scheme, options.profile, options.scheme_params(vsize))
    if sch.profile == "markllm" and getattr(sch, "window_scheme", "") == "self" and vsize > 4096:
        warn(f"MarkLLM self-window generation computes up to {vsize} permutations per distinct context (slow)")
    return WatermarkLogitsProcessor(sch), {**sch.config(), "vocab_source": vsource}


def generate_jsonl(options: GenerateOptions, progress: Progress | None = None, *,
                   on_warning: Callable[[str], None] | None = None) -> GenerationResult:
    """Generate a continuation for every prompt and write ``options.output`` (atomic) + its manifest."""
    from llmguard.io.output_safety import OutputLock, check_output

    o = options
    # before the model loads: OUT is never an input (the prompts!), its parent is usable, and it
    # stays locked for the whole run so a concurrent run on the same OUT fails instead of racing
    inputs = [Path(p) for p in (o.prompts, o.model, o.adapter) if p is not None]
    check_output(o.output, inputs, force=o.force or o.resume, kind="file")
    with OutputLock(o.output):
        return _generate_locked(o, progress, on_warning)


def _generate_locked(o: GenerateOptions, progress: Progress | None, on_warning: Callable[[str], None] | None) -> GenerationResult:
    from llmguard.inference import generate as run_generate
    from llmguard.watermark import generation_resume as resume
    from llmguard.inference import load_causal_lm
    from llmguard.io.atomic import atomic_open, atomic_write_json
    from llmguard.io.manifest import Manifest

    progress = progress or NullProgress()
    warn = Warnings(on_warning)

    prompt_texts, metas = read_prompts(o, warn)
    manifest = Manifest(verb=o.verb)
    manifest.add_input("prompts", o.prompts)
    with manifest.stage("load"):
        lm, tokenizer = load_causal_lm(o.model, adapter=o.adapter, device=o.device, dtype=o.dtype, on_warning=warn)
    processor, wm_config = _processor(o, lm, tokenizer, warn)
    sampling = o.sampling()
    t0 = time.perf_counter()
    def where(p: Any) -> str | None:  # the same model however it is spelled (relative, absolute)
        return None if p is None else str(Path(p).resolve()) if Path(p).exists() else str(p)

    parameters = {k: v for k, v in o.to_manifest().items() if k not in ("output", "prompts", "model", "adapter")}
    settings = {"model": where(o.model), "adapter": where(o.adapter), "parameters": parameters, "watermark": wm_config, "sampling": sampling}
    print_ = resume.fingerprint(prompt_texts, settings)
    resumed = resume.load(o.output, print_) if o.resume else resume.ResumeState()
    if resumed.batches:
        resume.restore_rng(resumed)
    partial = resume.PartialWriter(o.output, print_, resumed)
    try:
        with manifest.stage("generate") as stage:
            texts = run_generate(lm, tokenizer, prompt_texts, max_new_tokens=o.max_new_tokens, batch_size=o.batch_size,
                                 do_sample=o.sample, temperature=o.temperature, top_p=o.top_p, seed=o.seed, logits_processor=processor,
                                 progress=progress, template=None if o.template == "none" else o.template,
                                 start_batch=resumed.batches, on_batch=partial)
            stage["prompts"] = len(prompt_texts)
            stage["resumed_prompts"] = len(resumed.texts)
    except OSError as err:  # a disk that cannot take the partial file cannot resume either
        from llmguard.io.output_safety import WRITE_ERRNOS, disk_error

        partial.remove()
        if err.errno in WRITE_ERRNOS:
            raise disk_error(err, o.output) from None
        raise
    except BaseException:
        partial.close()  # kept: --resume continues from the last finished batch
        raise
    for index, text in resumed.texts.items():
        texts[index] = text
    with atomic_open(o.output) as handle:
        for prompt, text, meta in zip(prompt_texts, texts, metas):
            if o.fmt == "sft":
                rec = {"instruction": prompt, "input": "", "output": text, **meta}
            else:
                rec = {**meta, "prompt": prompt, "text": text, "watermark": wm_config, "sampling": sampling, "model": o.model}
            handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
    partial.remove()
    manifest.parameters = {**o.to_manifest(), "watermark": wm_config, "sampling": sampling}
    payload = manifest.to_dict()
    atomic_write_json(o.output.with_name(o.output.name + ".llmguard.json"), payload)
    return GenerationResult(o.output, len(texts), wm_config, payload, time.perf_counter() - t0, list(warn))
