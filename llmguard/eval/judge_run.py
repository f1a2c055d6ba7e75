"""One run skeleton for the judge verbs, and the protocol each verb plugs into it.

:func:`run_judges` does what ``eval hdc`` and ``eval ace-m3`` share: read and validate the items,
warn about an experimental preset, open the generation cache and the resumable results file,
let the protocol judge, read the records back, summarise, decide the exit code (0; 1 too many
unparsed; 3 items or judges that failed) and the ``--fail-below`` gate (10), and write the
manifest beside the results. A :class:`JudgeProtocol` (``HdcProtocol``, ``AceM3Protocol``) says
what is judged, how the records are summarised and which score the gate reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmguard.progress import NullProgress, Progress


class JudgeProtocol(Protocol):
    """What one judge verb judges and how its records are read."""

    verb: str  # the records' ``verb`` field
    options: Any
    templates: Any
    started: float  # time.perf_counter() when the protocol was prepared (the manifest's "judge" stage)

    def read_items(self) -> list[Any]: ...

    def plan(self, n_items: int) -> str: ...

    def run(self, items: list[Any], results: Any, decoding: Any, cache: Any, progress: Progress) -> dict[str, Any]: ...

    def summarize(self, records: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]: ...

    def counted(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def gate(self, summary: dict[str, Any], fail_below: float) -> str | None: ...

    def manifest_parameters(self) -> dict[str, Any]: ...


@dataclass
class JudgeRun:
    """A finished judge run: the summary (the ``--json`` document), the exit code and why."""

    summary: dict[str, Any]
    exit_code: int
    message: str | None
    output: Path
    manifest: Path


def run_judges(protocol: JudgeProtocol, progress: Progress | None = None, *, info: Callable[[str], None] = lambda m: None,
               warn: Callable[[str], None] = lambda m: None) -> JudgeRun:
    """Judge ``protocol.options.items`` into ``options.output`` (see the module docstring).

    The results file is checked and locked before the items are read or a judge loads, so a
    second run on the same output fails at once (exit 4) instead of interleaving records.
    """
    from llmguard.io.output_safety import OutputLock

    check_judge_output(protocol.options)
    with OutputLock(protocol.options.output):
        return _run_judges_locked(protocol, progress, info, warn)


def _run_judges_locked(protocol: JudgeProtocol, progress: Progress | None, info: Callable[[str], None],
                       warn: Callable[[str], None]) -> JudgeRun:
    from llmguard.eval.cache import GenerationCache, default_cache_path
    from llmguard.eval.hdc import exit_code_for
    from llmguard.eval.items import ResultsFile, read_jsonl

    o, templates = protocol.options, protocol.templates
    progress = progress or NullProgress()
    items = protocol.read_items()
    if o.limit is not None:
        items = items[: o.limit]
    if templates.experimental:
        # one short line, silenced by -q (an info line, not a warning): the preset's full status
        # is in the summary and every record; repeating a paragraph on every run is noise
        info(f"note: preset '{templates.name}' is experimental (the paper's prompts are unpublished; see docs/eval.md)")
    decoding = o.decoding()
    cache = None if o.no_cache else GenerationCache(o.cache or default_cache_path())
    info(f"judging {len(items)} items{protocol.plan(len(items))} -> {o.output}")
    try:
        with ResultsFile(o.output, resume=o.resume, force=o.force, inputs=protocol_inputs(o)) as results:
            stats = protocol.run(items, results, decoding, cache, progress)
    finally:
        progress.close()
        if cache is not None:
            cache.close()
    records = [r for r in read_jsonl(o.output, "results") if r.get("verb") == protocol.verb]
    summary = protocol.summarize(records, stats)
    if o.limit is not None:
        summary["note"] = "--limit was used: debugging run, not a reportable result"
    code, message = exit_code_for(protocol.counted(records), o.max_unparsed)
    gate = protocol.gate(summary, o.fail_below) if o.fail_below is not None and code == 0 else None
    summary["exit_code"] = 10 if gate else code
    manifest = _write_manifest(protocol, summary, decoding)
    return JudgeRun(summary, 10 if gate else code, gate or message, o.output, manifest)


def protocol_inputs(options: Any) -> list[Path]:
    """Every file or directory a judge run reads, which its results may never replace."""
    paths: list[Path] = []
    for name in ("items", "template", "cache", "judge", "conclusion", "branch_judge", "image_root"):
        value = getattr(options, name, None)
        if value and Path(str(value)).exists():
            paths.append(Path(str(value)))
    return paths


def check_judge_output(options: Any) -> None:
    """The results file's refusals, before any judge loads (see :class:`~llmguard.eval.items.ResultsFile`)."""
    from llmguard.errors import UsageError
    from llmguard.io.output_safety import check_output

    if options.output.exists() and not options.resume and not options.force:
        raise UsageError(f"{options.output}: exists; pass --resume to continue it or --force to replace it")
    check_output(options.output, protocol_inputs(options), force=True, kind="file")


def _write_manifest(protocol: JudgeProtocol, summary: dict[str, Any], decoding: Any) -> Path:
    """``<output>.llmguard.json`` beside the results file (atomic)."""
    import json

    from llmguard.io.atomic import atomic_write_text
    from llmguard.io.manifest import Manifest

    o = protocol.options
    parameters = {**o.to_manifest(), **protocol.manifest_parameters(), "decoding": decoding.to_json(),
                  "template": protocol.templates.describe()}
    m = Manifest(verb=o.verb, parameters=parameters, extra={"summary": summary})
    for role, path in {"items": o.items, **({"template": o.template} if o.template else {})}.items():
        if path is not None and Path(path).exists():
            m.add_input(role, Path(path))
    m.stages.append({"name": "judge", "seconds": round(time.perf_counter() - protocol.started, 3)})
    target = o.output.with_name(o.output.name + ".llmguard.json")
    atomic_write_text(target, json.dumps(m.to_dict(), indent=2, default=str))
    return target
