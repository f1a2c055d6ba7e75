"""Options of the judge verbs (``eval hdc``, ``eval ace-m3``); importable without torch.

Both verbs run the same skeleton (:mod:`llmguard.eval.judge_run`): read items, run judges with
resume, cache and fingerprints, summarise, gate, write the manifest. Their shared flags are
declared once, as the fields of :class:`JudgeRunOptions` (with the helpers that turn them into a
judge config, a decoding and a field map); each verb's class adds its protocol's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llmguard.errors import UsageError
from llmguard.options import PANEL_INPUT, PANEL_METHOD, PANEL_OUTPUT, PANEL_PERF, Options, option

PANEL_JUDGE = "Judge model"


@dataclass(frozen=True, kw_only=True)
class JudgeRunOptions(Options):
    """The fields every judge verb shares (a verb class adds its own and the output default)."""

    items: Path = option(help="Items to judge (JSONL, one object per line).", positional=True, manifest=False)
    judge: str | None = option(None, help="Judge model directory (HF layout) or hub id, used for every criterion not given its own.",
                               panel=PANEL_JUDGE, manifest=False)
    backend: str = option("hf", help="hf (transformers) or vllm (optional, GPU; needs the vllm package).", panel=PANEL_JUDGE)
    load_in_4bit: bool = option(False, help="Quantise the judge to 4 bit (bitsandbytes, GPU).", panel=PANEL_JUDGE, manifest=False)
    load_in_8bit: bool = option(False, help="Quantise the judge to 8 bit (bitsandbytes, GPU).", panel=PANEL_JUDGE, manifest=False)
    trust_remote_code: bool = option(False, help="Allow custom modelling code from the judge's directory.", panel=PANEL_JUDGE,
                                     manifest=False)
    template: Path | None = option(None, help="Template directory replacing the shipped preset (preset.json + *.txt).",
                                   panel=PANEL_METHOD, manifest=False)
    prompt_format: str = option("auto", help="auto (the judge's chat template if it has one), chat, plain or none (raw prompt).",
                                panel=PANEL_METHOD, manifest=False)
    max_new_tokens: int = option(512, help="Generation limit per judge output.", panel=PANEL_METHOD, min=1, manifest=False)
    retries: int = option(0, help="Regenerate an unparsable output at most N times (sampled, seed recorded).", panel=PANEL_METHOD,
                          min=0, max=10, manifest=False)
    retry_temperature: float = option(0.7, help="Sampling temperature of retries.", panel=PANEL_METHOD, manifest=False)
    seed: int = option(0, help="Base seed of retries (attempt k uses seed+k).", panel=PANEL_METHOD, manifest=False)
    id_field: str = option("id", help="Field holding the item id (unique).", panel=PANEL_INPUT, manifest=False)
    question_field: str = option("question", help="Field holding the question.", panel=PANEL_INPUT, manifest=False)
    answer_field: str = option("answer", help="Field holding the candidate answer.", panel=PANEL_INPUT, manifest=False)
    reference_field: str = option("reference", help="Field holding an optional reference answer.", panel=PANEL_INPUT, manifest=False)
    group_field: str | None = option(None, help="Field grouping answers to the same question (default: the question text).",
                                     panel=PANEL_INPUT, manifest=False)
    keep_field: tuple[str, ...] = option((), help="Copy this input field into each record's 'meta' (repeatable; for agree --by).",
                                         panel=PANEL_INPUT, manifest=False)
    skip_bad: bool = option(False, help="Record lines that are not JSON as input errors instead of stopping.", panel=PANEL_INPUT,
                            manifest=False)
    limit: int | None = option(None, help="Judge only the first N items (debugging; recorded in the manifest).", panel=PANEL_INPUT,
                               min=1)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", envvar="LLMGUARD_DEVICE", panel=PANEL_PERF)
    dtype: str = option("auto", help="auto, float32, bfloat16 or float16 for the judge.", panel=PANEL_PERF)
    batch_size: int = option(8, help="Prompts per generation batch (length-bucketed).", panel=PANEL_PERF, min=1, manifest=False)
    cache: Path | None = option(None, help="Generation cache (SQLite; default $LLMGUARD_CACHE/eval/generations.sqlite).",
                                panel=PANEL_PERF, manifest=False)
    no_cache: bool = option(False, help="Neither read nor write the generation cache.", panel=PANEL_PERF, manifest=False)
    force: bool = option(False, help="Replace OUTPUT if it exists.", panel=PANEL_OUTPUT, manifest=False)
    max_unparsed: float = option(0.0, help="Exit 1 when more than this share of judge outputs did not parse.", panel=PANEL_OUTPUT,
                                 min=0, max=1, manifest=False)
    fail_below: float | None = option(None, help="Exit 10 when a criterion's mean score is below this (CI gate).",
                                      panel=PANEL_OUTPUT, manifest=False)
    # declared by each verb (their defaults or manifest entries differ)
    output: Path
    resume: bool
    no_reference: bool

    def validate(self) -> None:
        self.check_run()

    def check_run(self) -> None:
        if self.resume and self.force:
            raise UsageError("--resume and --force contradict each other")

    def judge_config(self, path: str, modality: str) -> Any:
        from llmguard.eval.runner import JudgeConfig

        return JudgeConfig(path=path, device=self.device, dtype=self.dtype, load_in_4bit=self.load_in_4bit,
                           load_in_8bit=self.load_in_8bit, trust_remote_code=self.trust_remote_code, backend=self.backend,
                           modality=modality)

    def decoding(self) -> Any:
        from llmguard.eval.runner import Decoding

        return Decoding(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, prompt_format=self.prompt_format,
                        retries=self.retries, retry_temperature=self.retry_temperature, seed=self.seed)

    def field_map(self, **extra: Any) -> Any:
        from llmguard.eval.items import FieldMap

        return FieldMap(id=self.id_field, question=self.question_field, answer=self.answer_field, reference=self.reference_field,
                        group=self.group_field, keep=tuple(self.keep_field), **extra)


@dataclass(frozen=True, kw_only=True)
class EvalHdcOptions(JudgeRunOptions):
    """Every parameter of ``eval hdc``: items, the three experts, single or pairwise judging, the run."""

    verb: ClassVar[str] = "eval hdc"

    output: Path = option(Path("hdc-results.jsonl"), help="Results JSONL (one record per item and criterion).", short="-o",
                          panel=PANEL_OUTPUT, manifest=False)
    expert_pqr: str | None = option(None, help="Judge for REL (Patient Question Relevance).", panel=PANEL_JUDGE, manifest=False)
    expert_mkc: str | None = option(None, help="Judge for COR (Medical Knowledge Correctness).", panel=PANEL_JUDGE, manifest=False)
    expert_exp: str | None = option(None, help="Judge for EXP (Expression).", panel=PANEL_JUDGE, manifest=False)
    pairwise: bool = option(False, help="Judge two answers per item in one prompt (--answer-field and --answer-b-field).",
                            panel=PANEL_METHOD, manifest=False)
    swap: bool = option(False, help="With --pairwise, judge both orders (A,B) and (B,A): swap consistency.", panel=PANEL_METHOD)
    aspects: str | None = option(None, help="Comma list of aspects to judge (REL,COR,EXP or PQR,MKC,EXP); default all.",
                                 panel=PANEL_METHOD, manifest=False)
    aggregate: str = option("mean", help="Sub-aspects -> aspect score: mean, sum, min or weights:CONT=2,COND=1,...", panel=PANEL_METHOD,
                            manifest=False)
    answer_b_field: str = option("answer_b", help="Field holding the second answer (--pairwise).", panel=PANEL_INPUT, manifest=False)
    no_reference: bool = option(False, help="Never show the reference answer to the judge.", panel=PANEL_INPUT)
    resume: bool = option(False, help="Continue OUTPUT: skip records already in it.", panel=PANEL_OUTPUT)

    def validate(self) -> None:
        self.check_run()
        if self.swap and not self.pairwise:
            raise UsageError("--swap needs --pairwise")


@dataclass(frozen=True, kw_only=True)
class EvalAceM3Options(JudgeRunOptions):
    """Every parameter of ``eval ace-m3``: items with images, branch and Conclusion judges, the merge, the run."""

    verb: ClassVar[str] = "eval ace-m3"

    output: Path = option(Path("ace-m3-results.jsonl"), help="Results JSONL (one record per item and criterion).", short="-o",
                          panel=PANEL_OUTPUT, manifest=False)
    branch: tuple[str, ...] = option((), help="Judge of one branch, KEY=PATH (e.g. EXP=/models/ACE-M3_EXP); repeatable.",
                                     panel=PANEL_JUDGE, manifest=False)
    conclusion: str | None = option(None, help="The merge (Conclusion) judge (default: --judge).", panel=PANEL_JUDGE, manifest=False)
    text_only: bool = option(False, help="Judges are text-only causal LMs (the image is not shown).", flag="--text-only-judge",
                             panel=PANEL_JUDGE, manifest=False)
    merge: str = option("model", help="model (the Conclusion judge), or a formula over branch scores: mean, min, "
                        "weighted:REL=1,COR=2,EXP=1.", panel=PANEL_METHOD, manifest=False)
    scale: str | None = option(None, help="Score range LOW-HIGH (default: the preset's, 1-5).", panel=PANEL_METHOD, manifest=False)
    image_field: str = option("image", help="Field holding the image: a path (relative to ITEMS), data: URI or URL.", panel=PANEL_INPUT,
                              manifest=False)
    no_reference: bool = option(False, help="Never show the reference answer to the judge.", panel=PANEL_INPUT, manifest=False)
    resume: bool = option(False, help="Continue OUTPUT: skip records already in it.", panel=PANEL_OUTPUT, manifest=False)

    def scale_range(self, default: tuple[float, float]) -> tuple[float, float]:
        """``--scale LOW-HIGH`` (or the preset's ``default``)."""
        if not self.scale:
            return default
        try:
            a, b = self.scale.split("-", 1)
            lo, hi = float(a), float(b)
        except ValueError:
            raise UsageError(f"--scale: {self.scale!r} is not LOW-HIGH (e.g. 1-5)") from None
        if lo >= hi:
            raise UsageError(f"--scale: low {lo:g} must be below high {hi:g}")
        return lo, hi
