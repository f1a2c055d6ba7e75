"""Options shared by ``eval hdc`` and ``eval ace-m3`` (the judge runner's flags), declared once.

Nothing heavy is imported here: the library modules are imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmguard.cli.options import PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF

PANEL_JUDGE = "Judge model"

ItemsArg = Annotated[Path, typer.Argument(help="Items to judge (JSONL, one object per line).", show_default=False)]
OutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Results JSONL (one record per item and criterion).", rich_help_panel=PANEL_OUTPUT)
]
IdFieldOpt = Annotated[str, typer.Option("--id-field", help="Field holding the item id (unique).", rich_help_panel=PANEL_INPUT)]
QuestionFieldOpt = Annotated[str, typer.Option("--question-field", help="Field holding the question.", rich_help_panel=PANEL_INPUT)]
AnswerFieldOpt = Annotated[str, typer.Option("--answer-field", help="Field holding the candidate answer.", rich_help_panel=PANEL_INPUT)]
ReferenceFieldOpt = Annotated[
    str, typer.Option("--reference-field", help="Field holding an optional reference answer.", rich_help_panel=PANEL_INPUT)
]
NoReferenceOpt = Annotated[
    bool, typer.Option("--no-reference", help="Never show the reference answer to the judge.", rich_help_panel=PANEL_INPUT)
]
GroupFieldOpt = Annotated[
    Optional[str],
    typer.Option("--group-field", help="Field grouping answers to the same question (default: the question text).",
                 rich_help_panel=PANEL_INPUT),
]
KeepFieldOpt = Annotated[
    Optional[list[str]],
    typer.Option("--keep-field", help="Copy this input field into each record's 'meta' (repeatable; for agree --by).",
                 rich_help_panel=PANEL_INPUT),
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Record lines that are not JSON as input errors instead of stopping.",
                       rich_help_panel=PANEL_INPUT)
]
LimitOpt = Annotated[
    Optional[int], typer.Option("--limit", help="Judge only the first N items (debugging; recorded in the manifest).",
                                rich_help_panel=PANEL_INPUT, min=1)
]

JudgeOpt = Annotated[
    Optional[str], typer.Option("--judge", help="Judge model directory (HF layout) or hub id, used for every criterion not given its own.",
                                rich_help_panel=PANEL_JUDGE)
]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="hf (transformers) or vllm (optional, GPU; needs the vllm package).",
                      rich_help_panel=PANEL_JUDGE)
]
Load4Opt = Annotated[bool, typer.Option("--load-in-4bit", help="Quantise the judge to 4 bit (bitsandbytes, GPU).", rich_help_panel=PANEL_JUDGE)]
Load8Opt = Annotated[bool, typer.Option("--load-in-8bit", help="Quantise the judge to 8 bit (bitsandbytes, GPU).", rich_help_panel=PANEL_JUDGE)]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow custom modelling code from the judge's directory.", rich_help_panel=PANEL_JUDGE)]
DeviceOpt = Annotated[
    str, typer.Option("--device", envvar="LLMGUARD_DEVICE", help="auto, cpu, cuda or cuda:N.", rich_help_panel=PANEL_PERF)
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16 for the judge.", rich_help_panel=PANEL_PERF)]
PromptFormatOpt = Annotated[
    str,
    typer.Option("--prompt-format", help="auto (the judge's chat template if it has one), chat, plain or none (raw prompt).",
                 rich_help_panel=PANEL_METHOD),
]
TemplateOpt = Annotated[
    Optional[Path], typer.Option("--template", help="Template directory replacing the shipped preset (preset.json + *.txt).",
                                 rich_help_panel=PANEL_METHOD)
]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Generation limit per judge output.", rich_help_panel=PANEL_METHOD, min=1)]
RetriesOpt = Annotated[
    int, typer.Option("--retries", help="Regenerate an unparsable output at most N times (sampled, seed recorded).",
                      rich_help_panel=PANEL_METHOD, min=0, max=10)
]
RetryTempOpt = Annotated[float, typer.Option("--retry-temperature", help="Sampling temperature of retries.", rich_help_panel=PANEL_METHOD)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed of retries (attempt k uses seed+k).", rich_help_panel=PANEL_METHOD)]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per generation batch (length-bucketed).", rich_help_panel=PANEL_PERF, min=1)]
CacheOpt = Annotated[
    Optional[Path], typer.Option("--cache", help="Generation cache (SQLite; default $LLMGUARD_CACHE/eval/generations.sqlite).",
                                 rich_help_panel=PANEL_PERF)
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the generation cache.", rich_help_panel=PANEL_PERF)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue OUTPUT: skip records already in it.", rich_help_panel=PANEL_OUTPUT)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.", rich_help_panel=PANEL_OUTPUT)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document.", rich_help_panel=PANEL_OUTPUT)]
MaxUnparsedOpt = Annotated[
    float, typer.Option("--max-unparsed", help="Exit 1 when more than this share of judge outputs did not parse.",
                        rich_help_panel=PANEL_OUTPUT, min=0.0, max=1.0)
]
FailBelowOpt = Annotated[
    Optional[float], typer.Option("--fail-below", help="Exit 10 when a criterion's mean score is below this (CI gate).",
                                  rich_help_panel=PANEL_OUTPUT)
]


def judge_config(path: str, *, device: str, dtype: str, load_in_4bit: bool, load_in_8bit: bool,
                 trust_remote_code: bool, backend: str, modality: str) -> Any:
    from llmguard.eval.runner import JudgeConfig

    return JudgeConfig(path=path, device=device, dtype=dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                       trust_remote_code=trust_remote_code, backend=backend, modality=modality)


def open_cache(cache: Optional[Path], no_cache: bool) -> Any:
    if no_cache:
        return None
    from llmguard.eval.cache import GenerationCache, default_cache_path

    return GenerationCache(cache or default_cache_path())


def write_manifest(output: Path, verb: str, parameters: dict[str, Any], inputs: dict[str, Path],
                   stages: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    """``<output>.llmguard.json`` beside the results file."""
    import json

    from llmguard.io.manifest import Manifest

    m = Manifest(verb=verb, parameters=parameters, extra=extra)
    for role, path in inputs.items():
        if path is not None and Path(path).exists():
            m.add_input(role, Path(path))
    m.stages.extend(stages)
    target = output.with_name(output.name + ".llmguard.json")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(m.to_dict(), indent=2, default=str))
    tmp.replace(target)
    return target
