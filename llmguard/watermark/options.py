"""Options of the watermark verbs (``detect``, ``generate``); importable without torch or numpy.

The scheme fields are shared: every watermark verb's options derive from :class:`SchemeOptions`
(one declaration: flag, help, validation, the ``SchemeParams``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llmguard.errors import UsageError
from llmguard.options import PANEL_INPUT, PANEL_OUTPUT, PANEL_PERF, Options, option

PANEL_WM = "Watermark"
PANEL_STATS = "Statistics"
P_METHODS = ("normal", "binomial", "hf-approx")


def _dedup_modes() -> tuple[str, ...]:
    from llmguard.watermark.stats import DEDUP_MODES

    return tuple(DEDUP_MODES)


@dataclass(frozen=True, kw_only=True)
class SchemeOptions(Options):
    """The watermark key every watermark verb shares (scheme … rng_device), declared once, with
    its validation and the ``SchemeParams`` it gives. ``delta`` (the green-logit bias) is declared
    by the verbs that take it; detection alone does not use it."""

    scheme: str = option("kgw", help="Watermark family: kgw or unigram.", panel=PANEL_WM)
    profile: str | None = option(None, panel=PANEL_WM, help="Implementation to match bit for bit: kgw → hf (default), kirchenbauer, "
                                 "markllm, fast; unigram → zhao (default), markllm.")
    seeding: str | None = option(None, panel=PANEL_WM, help="Seeding scheme of the profile: hf lefthash|selfhash; kirchenbauer "
                                 "simple_1|selfhash|minhash|skipgram|ff-<prf>-<h>-<salt>; markllm time|additive|skip|min[-self]; fast hash.")
    gamma: float | None = option(None, help="Green-list fraction γ (profile default).", panel=PANEL_WM)
    key: int | None = option(None, help="Hash key (profile default, 15485863 for KGW).", panel=PANEL_WM)
    context_width: int | None = option(None, help="Context width h (MarkLLM prefix_length).", panel=PANEL_WM)
    vocab_size: str = option("auto", panel=PANEL_WM, help="Vocabulary size of the green lists: tokenizer (len(tokenizer)), model "
                             "(config.json vocab_size), N, or auto (model for --profile hf when --model is given, as transformers "
                             "does; else tokenizer).")
    rng_device: str = option("cpu", panel=PANEL_WM, help="Device of the torch generator behind the permutations (cpu and cuda give "
                             "different lists).")

    def check_scheme(self) -> None:
        """Fail early (exit 2) on an unknown scheme/profile pair, before reading any input."""
        from llmguard.watermark.schemes import DEFAULT_PROFILE, REGISTRY

        s = self.scheme.lower()
        if s not in DEFAULT_PROFILE:
            raise UsageError(f"unknown --scheme {self.scheme!r}; choose one of: {', '.join(sorted(DEFAULT_PROFILE))}")
        p = (self.profile or DEFAULT_PROFILE[s]).lower()
        if (s, p) not in REGISTRY:
            valid = ", ".join(pp for ss, pp in sorted(REGISTRY) if ss == s)
            raise UsageError(f"--scheme {s} has no --profile {p!r}; valid profiles: {valid}")

    def resolved_profile(self) -> str:
        from llmguard.watermark.schemes import DEFAULT_PROFILE

        return (self.profile or DEFAULT_PROFILE[self.scheme.lower()]).lower()

    def vocab_source(self, has_model: bool) -> str:
        """``--vocab-size`` with ``auto`` resolved, one rule for every verb: transformers builds its
        green lists from the model's ``vocab_size`` (profile hf, when a model is known); the
        other implementations from ``len(tokenizer)``."""
        if self.vocab_size != "auto":
            return self.vocab_size
        return "model" if self.resolved_profile() == "hf" and has_model else "tokenizer"

    def scheme_params(self, vocab_size: int, workers: int = 1) -> Any:
        from llmguard.watermark.schemes import SchemeParams

        return SchemeParams(vocab_size=vocab_size, gamma=self.gamma, delta=getattr(self, "delta", None), key=self.key, seeding=self.seeding,
                            context_width=self.context_width, rng_device=self.rng_device, workers=workers)


@dataclass(frozen=True, kw_only=True)
class DetectOptions(SchemeOptions):
    """Every parameter of ``watermark detect``: the texts, the scheme, the statistics and the gate."""

    verb: ClassVar[str] = "watermark detect"

    source: str = option("-", help="Plain text, JSONL or a JSON array; - for stdin.", positional=True, metavar="[FILE|-]")
    token_ids: tuple[tuple[int, ...], ...] | None = option(
        None, help="In-memory token id lists instead of SOURCE (library use; needs an explicit --vocab-size).", cli=False, manifest=False)
    tokenizer: str | None = option(None, help="Tokenizer directory, tokenizer.json, or hub id.", short="-t", panel=PANEL_INPUT)
    text_field: str | None = option(None, help="JSON field with the text (default: text).", panel=PANEL_INPUT)
    prompt_field: str | None = option(None, panel=PANEL_INPUT, help="JSON field with the prompt: stripped from the text when it starts "
                                      "with it; its windows are excluded from the pooled corpus test.")
    ids_field: str | None = option(None, help="JSON field with token ids (instead of text; no tokenizer needed).", panel=PANEL_INPUT)
    skip_bad: bool = option(False, help="Skip malformed, empty or too-short records (warned) instead of failing.", panel=PANEL_INPUT)
    model: str | None = option(None, help="Model directory whose config.json gives the model vocab size (no weights read).", panel=PANEL_INPUT)
    delta: float | None = option(None, help="Green-logit bias δ (profile default).", panel=PANEL_WM)
    dedup: str | None = option(None, panel=PANEL_STATS, choices=_dedup_modes,
                               help="Repeated units: none, ngram (unique n-grams, reference default), window (unique context), "
                               "window+token. Default: the profile's reference behaviour.")
    pvalue: str = option("normal", panel=PANEL_STATS, choices=P_METHODS,
                         help="normal (from z, as the references), binomial (exact tail), or hf-approx (transformers <= 5.20's "
                         "approximation, for reproducing old reports; not calibrated).")
    z_threshold: float = option(4.0, help="Predict watermarked when z exceeds this.", panel=PANEL_STATS)
    fpr: float | None = option(None, help="Predict watermarked when p < FPR (overrides --z-threshold).", panel=PANEL_STATS,
                               min=0, max=1, min_exclusive=True, max_exclusive=True)
    aggregate: bool = option(False, panel=PANEL_STATS, help="Corpus results: median z/p, mean -log10 p, and a pooled test with a global "
                             "dedup tape and prompt-window exclusion (radioactivity).")
    group_tokens: int | None = option(None, help="Also test fixed groups of N concatenated tokens (Pan et al.: 10000).", panel=PANEL_STATS,
                                      min=1)
    html: Path | None = option(None, help="Write a self-contained HTML page with the token view and stats.", panel=PANEL_OUTPUT)
    fail_on_detect: bool = option(False, panel=PANEL_OUTPUT,
                                  help="Exit 10 when any text (with --aggregate: the corpus) is predicted watermarked.")
    workers: int = option(0, help="Processes for permutation green lists (0 = all cores).", panel=PANEL_PERF)

    def validate(self) -> None:
        self.check_scheme()
        if self.token_ids is None and self.ids_field is None and self.tokenizer is None:
            raise UsageError("--tokenizer is required (or give token ids with --ids-field)")
        if self.text_field is not None and self.ids_field is not None:
            raise UsageError("--text-field and --ids-field exclude each other")
        if self.html is not None and self.html.is_dir():
            raise UsageError(f"--html {self.html}: is a directory")
        if self.vocab_source(self.model is not None) == "tokenizer" and self.tokenizer is None:
            raise UsageError("--vocab-size tokenizer needs --tokenizer; give --vocab-size N with --ids-field")


@dataclass(frozen=True, kw_only=True)
class GenerateOptions(SchemeOptions):
    """Every parameter of ``watermark generate``: model, prompts, scheme, sampling and the output file."""

    verb: ClassVar[str] = "watermark generate"

    model: str = option(help="Model directory (HF layout) or hub id.", short="-m", panel=PANEL_INPUT)
    prompts: Path = option(help="JSONL/JSON prompts (or plain text, one per line).", short="-p", panel=PANEL_INPUT)
    output: Path = option(help="Output JSONL (written atomically).", short="-o", panel=PANEL_OUTPUT)
    adapter: str | None = option(None, help="PEFT adapter directory.", panel=PANEL_INPUT)
    prompt_field: str = option("prompt", help="JSON field with the prompt.", panel=PANEL_INPUT)
    skip_bad: bool = option(False, help="Skip malformed prompt records (warned).", panel=PANEL_INPUT, manifest=False)
    template: str = option("none", help="Prompt formatting: none (as given), auto (chat template if any), plain, chat.", panel=PANEL_INPUT,
                           choices=("none", "auto", "plain", "chat"), manifest=False)
    delta: float | None = option(None, help="Green-logit bias δ (profile default).", panel=PANEL_WM)
    no_watermark: bool = option(False, help="Plain generation (the control).", panel=PANEL_WM, manifest=False)
    max_new_tokens: int = option(64, help="New tokens per prompt.", panel="Method", manifest=False)
    sample: bool = option(True, help="Multinomial sampling (default) or greedy.", flag="--sample/--greedy", panel="Method", manifest=False)
    temperature: float = option(1.0, help="Sampling temperature (with --sample).", panel="Method", min=0, min_exclusive=True, manifest=False)
    top_p: float = option(1.0, help="Nucleus sampling mass (with --sample).", panel="Method", min=0, max=1, min_exclusive=True,
                          manifest=False)
    seed: int = option(0, help="Sampling seed (recorded).", panel="Method", manifest=False)
    fmt: str = option("plain", help="plain (prompt/text records) or sft (instruction/input/output).", flag="--format", panel=PANEL_OUTPUT,
                      choices=("plain", "sft"), manifest_key="format")
    batch_size: int = option(16, help="Prompts per generation batch.", panel=PANEL_PERF, min=1, manifest=False)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", envvar="LLMGUARD_DEVICE", panel=PANEL_PERF, manifest=False)
    dtype: str = option("auto", help="auto, float32, bfloat16 or float16.", panel=PANEL_PERF, manifest=False)
    force: bool = option(False, help="Replace OUT if it exists.", panel="Dangerous options", manifest=False)

    def validate(self) -> None:
        if not self.no_watermark:
            self.check_scheme()
        if self.output.exists() and not self.force:
            raise UsageError(f"{self.output} exists; pass --force to replace it")
        if self.output.is_dir():
            raise UsageError(f"{self.output} is a directory")

    def sampling(self) -> dict[str, Any]:
        """The sampling settings as recorded with every output record."""
        return {"do_sample": self.sample, "temperature": self.temperature if self.sample else None,
                "top_p": self.top_p if self.sample else None, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "batch_size": self.batch_size, "template": self.template}
