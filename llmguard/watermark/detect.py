"""Detection driver: tokenise, score all texts in one batch, dedup, test, aggregate.

All texts are scored together: the n-grams of the whole corpus go through ``scheme.green`` in one
call, so each distinct seed (context) costs one permutation however often it occurs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llmguard.errors import GateTripped, InvalidInputError, UsageError
from llmguard.progress import NullProgress, Progress, Warnings
from llmguard.watermark.schemes import Scheme, build_scheme
from llmguard.watermark.stats import DEDUP_MODES, LN10, TestResult, dedup_keep, green_test, norm_isf


# ----------------------------------------------------------------------------- tokenizer & vocab


def load_tokenizer(path: str, *, light: bool = False) -> Any:
    """A tokenizer from a local directory, a ``tokenizer.json`` file, or a hub id when online.

    ``light``: a generic fast tokenizer loads through ``tokenizers`` alone (no torch import,
    same ids; :mod:`llmguard.watermark.light_tokenizer`); others through transformers."""
    if light:
        from llmguard.watermark.light_tokenizer import load_light_tokenizer

        tok = load_light_tokenizer(path)
        if tok is not None:
            return tok
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    try:
        if p.is_file():
            if p.suffix != ".json":
                raise InvalidInputError(f"--tokenizer {path}: expected a directory or a tokenizer.json file")
            return PreTrainedTokenizerFast(tokenizer_file=str(p))
        if p.is_dir():
            return AutoTokenizer.from_pretrained(str(p))
        if path.count("/") == 1 and not path.startswith((".", "/")):
            return AutoTokenizer.from_pretrained(path)
    except InvalidInputError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds
        raise InvalidInputError(f"--tokenizer {path}: cannot load a tokenizer ({type(err).__name__}: {err})") from None
    raise InvalidInputError(f"--tokenizer {path}: no such directory or file")


def model_vocab_size(model: str | None) -> int | None:
    """``vocab_size`` from a model directory's config.json (no weights are read)."""
    if not model:
        return None
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        raise InvalidInputError(f"--model {model}: no config.json (needed for --vocab-size model)")
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{cfg}:{err.lineno}: not valid JSON ({err.msg})") from None
    vocab = data.get("vocab_size")
    if vocab is None and isinstance(data.get("text_config"), dict):
        vocab = data["text_config"].get("vocab_size")
    if not isinstance(vocab, int):
        raise InvalidInputError(f"{cfg}: no integer vocab_size")
    return vocab


def resolve_vocab_size(spec: str, tokenizer: Any, model: str | None) -> tuple[int, str, list[str]]:
    """``--vocab-size tokenizer|model|N`` → (size, source, warnings)."""
    warnings: list[str] = []
    tok_size = len(tokenizer) if tokenizer is not None else None
    mod_size = model_vocab_size(model) if model else None
    if tok_size is not None and mod_size is not None and tok_size != mod_size:
        warnings.append(
            f"tokenizer has {tok_size} tokens but the model's vocab_size is {mod_size}; "
            "transformers' watermark uses the model's, MarkLLM and the reference use the tokenizer's "
            "(choose with --vocab-size)"
        )
    if spec == "tokenizer":
        if tok_size is None:
            raise UsageError("--vocab-size tokenizer needs --tokenizer")
        return tok_size, "tokenizer", warnings
    if spec == "model":
        if mod_size is None:
            raise UsageError("--vocab-size model needs --model DIR (its config.json)")
        return mod_size, "model", warnings
    try:
        size = int(spec)
    except ValueError:
        raise UsageError(f"--vocab-size must be tokenizer, model or an integer, got {spec!r}") from None
    if size < 2:
        raise UsageError(f"--vocab-size must be at least 2, got {size}")
    for name, other in (("tokenizer", tok_size), ("model", mod_size)):
        if other is not None and other != size:
            warnings.append(f"--vocab-size {size} differs from the {name}'s {other}")
    return size, "explicit", warnings


@dataclass
class Tokenized:
    ids: list[int]
    offsets: list[tuple[int, int]] | None  # character spans in ``text`` (for views)
    text: str | None
    prompt_stripped: bool = False


def tokenize_text(tokenizer: Any, text: str, prompt: str | None = None) -> Tokenized:
    """Tokenise without special tokens, strip a leading BOS (as every reference does) and a prompt prefix."""
    stripped = False
    if prompt and text.startswith(prompt):
        text = text[len(prompt) :]
        stripped = True
    offsets = None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    else:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
        offsets = offsets[1:] if offsets is not None else None
    return Tokenized(ids, offsets, text, stripped)


# ----------------------------------------------------------------------------- thresholds


@dataclass
class Threshold:
    z: float | None = 4.0
    fpr: float | None = None

    def __post_init__(self) -> None:
        if self.fpr is not None and not 0.0 < self.fpr < 1.0:
            raise UsageError(f"--fpr must be in (0, 1), got {self.fpr}")

    def predict(self, result: TestResult) -> bool:
        if math.isnan(result.z):
            return False
        if self.fpr is not None:
            return result.log_p < math.log(self.fpr)
        return result.z > float(self.z)

    def as_dict(self) -> dict[str, Any]:
        if self.fpr is not None:
            return {"fpr": self.fpr, "z_equivalent": norm_isf(self.fpr), "rule": "p < fpr"}
        return {"z": self.z, "rule": "z > threshold"}


# ----------------------------------------------------------------------------- scoring


def ngram_matrix(ids: Sequence[int], prefix_len: int) -> np.ndarray:
    """Rows ``ids[i-prefix_len : i+1]`` for every scored position ``i >= prefix_len``."""
    arr = np.asarray(ids, dtype=np.int64)
    n = prefix_len + 1
    if len(arr) < n:
        return np.zeros((0, n), dtype=np.int64)
    return np.lib.stride_tricks.sliding_window_view(arr, n)


@dataclass
class TextScore:
    index: int
    result: TestResult
    token_status: np.ndarray  # per token: -1 not scored (context), 0 red, 1 green
    counted: np.ndarray  # per token: counted in the test (after dedup)


def _first_occurrences(group: np.ndarray, keys: np.ndarray, n_groups: int, vocab_size: int) -> np.ndarray:
    """Row indices of the first occurrence of each distinct (group, key row); exact.

    Rows are packed into one int64 when ``n_groups * V**width`` fits (the usual case for h ≤ 2),
    which makes ``np.unique`` a 1-D sort; otherwise rows are compared whole.
    """
    width = keys.shape[1]
    base = max(int(vocab_size), int(keys.max()) + 1 if keys.size else 1)
    if n_groups * base**width < 2**62:
        packed = group.astype(np.int64)
        for j in range(width):
            packed = packed * base + keys[:, j]
        _, first = np.unique(packed, return_index=True)
        return first
    _, first = np.unique(np.column_stack([group, keys]), axis=0, return_index=True)
    return first


def score_token_lists(
    scheme: Scheme,
    id_lists: Sequence[Sequence[int]],
    dedup: str = "none",
    p_method: str = "normal",
    progress: Progress | None = None,
) -> list[TextScore]:
    """Score each token list on its own (per-text dedup), computing green bits for all in one batch.

    Vectorised over the whole corpus: the n-gram rows of every text are built by index arithmetic on
    one flat array, green bits come from one ``scheme.green`` call, and per-text dedup is one
    ``np.unique`` over (text, key) rows.
    """
    import itertools

    if dedup not in DEDUP_MODES:
        raise UsageError(f"--dedup must be one of {', '.join(DEDUP_MODES)}, got {dedup!r}")
    progress = progress or NullProgress()
    k = scheme.prefix_len
    n_texts = len(id_lists)
    lens = np.fromiter((len(x) for x in id_lists), dtype=np.int64, count=n_texts)
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(lens.sum()))
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    n_scored = np.maximum(lens - k, 0)
    total = int(n_scored.sum())
    text_of_row = np.repeat(np.arange(n_texts, dtype=np.int64), n_scored)
    row_start = np.concatenate([[0], np.cumsum(n_scored)[:-1]]).astype(np.int64)
    pos = np.arange(total, dtype=np.int64) - np.repeat(row_start, n_scored) + np.repeat(starts + k, n_scored)
    rows = np.stack([flat[pos - k + j] for j in range(k + 1)], axis=1) if total else np.zeros((0, k + 1), np.int64)

    progress.stage("green lists", total=1)
    green = scheme.green(rows) if total else np.zeros(0, dtype=bool)
    progress.advance(1)

    if dedup == "none" or total == 0:
        keep = np.ones(total, dtype=bool)
    else:
        keys = rows if dedup in ("ngram", "window+token") else rows[:, :k]
        keep = np.zeros(total, dtype=bool)
        keep[_first_occurrences(text_of_row, keys, n_texts, scheme.vocab_size)] = True
    g_count = np.bincount(text_of_row, weights=(green & keep), minlength=n_texts).astype(np.int64)
    t_count = np.bincount(text_of_row, weights=keep, minlength=n_texts).astype(np.int64)
    status_flat = np.full(len(flat), -1, dtype=np.int8)
    counted_flat = np.zeros(len(flat), dtype=bool)
    status_flat[pos] = green
    counted_flat[pos] = keep

    out: list[TextScore] = []
    progress.stage("statistics", total=n_texts)
    for i in range(n_texts):
        a, b = int(starts[i]), int(starts[i] + lens[i])
        res = green_test(int(g_count[i]), int(t_count[i]), scheme.gamma, p_method)
        out.append(TextScore(i, res, status_flat[a:b], counted_flat[a:b]))
    progress.advance(n_texts)
    return out


# ----------------------------------------------------------------------------- corpus level


def prompt_windows(scheme: Scheme, prompt_lists: Sequence[Sequence[int] | None]) -> set[tuple[int, ...]]:
    """All context windows (length ``prefix_len``) that occur in the prompts (Sander et al.)."""
    k = scheme.prefix_len
    windows: set[tuple[int, ...]] = set()
    for ids in prompt_lists:
        if not ids or len(ids) < k:
            continue
        arr = np.asarray(ids, dtype=np.int64)
        if k == 0:
            continue
        for row in np.unique(np.lib.stride_tricks.sliding_window_view(arr, k), axis=0):
            windows.add(tuple(row.tolist()))
    return windows


@dataclass
class PooledTest:
    """The corpus-level test: its result (for the prediction) and its record (for the output)."""

    result: TestResult
    record: dict[str, Any]


def pooled_test(
    scheme: Scheme,
    id_lists: Sequence[Sequence[int]],
    scores: Sequence[TextScore],
    dedup: str,
    p_method: str,
    exclude_windows: set[tuple[int, ...]] | None = None,
) -> PooledTest:
    """One test over the whole corpus with a global dedup tape (radioactivity, Sander et al.)."""
    k = scheme.prefix_len
    seen: set = set()
    green = 0
    total = 0
    excluded = 0
    for ids, sc in zip(id_lists, scores):
        m = ngram_matrix(ids, k)
        if not len(m):
            continue
        g = sc.token_status[k:] == 1
        ok = np.ones(len(m), dtype=bool)
        if exclude_windows and k > 0:
            ok = np.array([tuple(r) not in exclude_windows for r in m[:, :k].tolist()], dtype=bool)
            excluded += int((~ok).sum())
        idx = np.flatnonzero(ok)
        keep = dedup_keep(m[idx], dedup, k, seen=seen if dedup != "none" else None)
        green += int(g[idx][keep].sum())
        total += int(keep.sum())
    res = green_test(green, total, scheme.gamma, p_method)
    other = "binomial" if p_method != "binomial" else "normal"
    alt = green_test(green, total, scheme.gamma, other)
    d = res.as_dict()
    d.update(
        dedup=dedup,
        tape="global",
        excluded_prompt_windows=excluded,
        **{f"log10_p_{other}": alt.log10_p},
    )
    return PooledTest(res, d)


def group_tests(
    scheme: Scheme,
    id_lists: Sequence[Sequence[int]],
    group_tokens: int,
    dedup: str,
    p_method: str,
) -> dict[str, Any]:
    """Pan et al.: concatenate all token ids, cut into fixed groups, test each; median p over groups."""
    if group_tokens < scheme.prefix_len + 1:
        raise UsageError(f"--group-tokens must be more than the context width ({scheme.prefix_len})")
    stream = [t for ids in id_lists for t in ids]
    groups = [stream[i : i + group_tokens] for i in range(0, len(stream), group_tokens)]
    dropped = 0
    if len(groups) > 1 and len(groups[-1]) < group_tokens:
        dropped = len(groups[-1])
        groups = groups[:-1]
    scores = score_token_lists(scheme, groups, dedup, p_method)
    zs = [s.result.z for s in scores]
    lps = [s.result.log_p for s in scores]
    return {
        "group_tokens": group_tokens,
        "num_groups": len(groups),
        "dropped_tail_tokens": dropped,
        "median_z": float(np.median(zs)) if zs else math.nan,
        "median_log10_p": float(np.median(lps)) / LN10 if lps else math.nan,
        "median_p": math.exp(float(np.median(lps))) if lps else math.nan,
        "groups": [s.result.as_dict() for s in scores],
    }


def corpus_summary(scores: Sequence[TextScore]) -> dict[str, Any]:
    """The CDG-KD format: median z, median p, mean −log10 p over texts."""
    zs = np.array([s.result.z for s in scores if not math.isnan(s.result.z)])
    lps = np.array([s.result.log_p for s in scores if not math.isnan(s.result.log_p)])
    if not len(zs):
        return {"num_texts": 0}
    return {
        "num_texts": len(zs),
        "median_z": float(np.median(zs)),
        "mean_z": float(np.mean(zs)),
        "median_p": math.exp(float(np.median(lps))),
        "median_log10_p": float(np.median(lps)) / LN10,
        "mean_neg_log10_p": float(np.mean(-lps / LN10)),
    }


# ----------------------------------------------------------------------------- the driver


@dataclass
class DetectionRun:
    """Everything :func:`detect` computed, ready to print, view or gate."""

    config: dict[str, Any]
    records: list[dict[str, Any]]
    scores: list[TextScore]
    tokens: list[Tokenized]
    aggregate: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    scheme: Scheme | None = None
    tokenizer: Any = None
    fail_on_detect: bool = False

    def gate(self) -> None:
        """``--fail-on-detect``: raise :class:`GateTripped` (exit 10) when a watermark was predicted
        (with ``--aggregate``: in the corpus; else in any text)."""
        if not self.fail_on_detect:
            return
        agg = self.aggregate
        if agg is not None and "prediction" in agg:
            if agg["prediction"]:
                raise GateTripped(f"watermark detected in the corpus (pooled z={agg['pooled']['z']:.2f})")
            return
        hits = [r for r in self.records if r["prediction"]]
        if hits:
            raise GateTripped(f"watermark detected in {len(hits)} of {len(self.records)} text(s) (first: {hits[0]['where']}, "
                              f"z={hits[0]['z']:.2f})")

    def write_html(self, path: Path) -> None:
        """The self-contained HTML token view, written atomically."""
        from llmguard.io.atomic import atomic_write_text
        from llmguard.watermark.view import html_page

        atomic_write_text(path, html_page(self.records, self.tokens, self.scores, self.config, self.tokenizer, self.aggregate))


def detect(options: Any, progress: Progress | None = None, *, scheme: Scheme | None = None,
           on_warning: Callable[[str], None] | None = None) -> DetectionRun:
    """``watermark detect`` as a function: read, tokenise, score, aggregate.

    ``options`` is a :class:`llmguard.watermark.options.DetectOptions`. ``scheme`` replaces the
    one the options describe (benchmarks patch its implementation); ``on_warning`` sees every
    warning as it happens (they are also in ``DetectionRun.warnings``).
    """
    import os

    o = options
    progress = progress or NullProgress()
    warn = Warnings(on_warning)

    threshold = Threshold(z=o.z_threshold, fpr=o.fpr)
    tok = load_tokenizer(o.tokenizer, light=True) if o.tokenizer else None
    if scheme is None:
        vsize, vsource, vwarn = resolve_vocab_size(o.vocab_source(o.model is not None), tok, o.model)
        for w in vwarn:
            warn(w)
        scheme = build_scheme(o.scheme, o.profile, o.scheme_params(vsize, o.workers if o.workers > 0 else (os.cpu_count() or 1)))
    else:
        vsize, vsource = scheme.vocab_size, "explicit"
    dedup_mode = o.dedup or scheme.default_dedup
    kept, tokens, prompts = _tokenized_inputs(o, tok, scheme, vsize, warn)
    scores = score_token_lists(scheme, [t.ids for t in tokens], dedup_mode, o.pvalue, progress)
    config = scheme.config()
    config.update(vocab_source=vsource, dedup=dedup_mode, p_method=o.pvalue, threshold=threshold.as_dict())
    records = [{"index": rec.index, "where": rec.where, **rec.meta, "num_tokens": len(t.ids), **sc.result.as_dict(),
                "prediction": threshold.predict(sc.result), "prompt_stripped": t.prompt_stripped, "config": config}
               for rec, t, sc in zip(kept, tokens, scores)]
    agg = None
    if o.aggregate or o.group_tokens:
        agg = {"num_texts": len(records), **corpus_summary(scores)}
        if o.aggregate:
            excl = prompt_windows(scheme, prompts) if o.prompt_field else None
            pooled = pooled_test(scheme, [t.ids for t in tokens], scores, dedup_mode if o.dedup is not None else "window+token",
                                 o.pvalue, excl)
            agg["pooled"] = pooled.record
            agg["prediction"] = threshold.predict(pooled.result)
        if o.group_tokens:
            agg["groups"] = group_tests(scheme, [t.ids for t in tokens], o.group_tokens, dedup_mode, o.pvalue)
        agg["config"] = config
    return DetectionRun(config, records, scores, tokens, agg, list(warn), scheme, tok, o.fail_on_detect)


def _tokenized_inputs(o: Any, tok: Any, scheme: Scheme, vsize: int, warn: Callable[[str], None]) -> tuple[list, list[Tokenized], list]:
    """The records that can be scored, their tokens (prompt stripped) and prompt ids."""
    from llmguard.watermark.data import Record, read_texts

    if o.token_ids is not None:
        records = [Record(i, f"text {i}", ids=list(ids)) for i, ids in enumerate(o.token_ids)]
    else:
        read = read_texts(o.source, text_field=o.text_field, prompt_field=o.prompt_field, ids_field=o.ids_field, skip_bad=o.skip_bad)
        for msg in read.skipped:
            warn(f"skipped {msg}")
        records = read.records
    kept, tokens, prompts = [], [], []
    need = scheme.prefix_len + 1
    for rec in records:
        t, p_ids = _tokenize_record(rec, tok)
        bad_id = next((i for i in t.ids if i >= vsize), None)
        problem = None
        if len(t.ids) < need:
            problem = (f"{rec.where}: {len(t.ids)} token(s) after prompt stripping, fewer than the {need} needed "
                       f"(context width {scheme.prefix_len} + 1)")
        elif bad_id is not None:
            problem = f"{rec.where}: token id {bad_id} is outside the vocabulary of size {vsize} (check --vocab-size)"
        if problem:
            if not o.skip_bad:
                raise InvalidInputError(problem)
            warn(f"skipped {problem}")
            continue
        kept.append(rec)
        tokens.append(t)
        prompts.append(p_ids)
    if not tokens:
        raise InvalidInputError(f"{o.source}: no text long enough to score")
    return kept, tokens, prompts


def _tokenize_record(rec: Any, tok: Any) -> tuple[Tokenized, list[int] | None]:
    """A record's scored tokens (a prompt prefix stripped) and its prompt's ids."""
    if rec.ids is None:
        return tokenize_text(tok, rec.text, rec.prompt), (tokenize_text(tok, rec.prompt).ids if rec.prompt else None)
    ids, stripped = rec.ids, False
    if rec.prompt_ids and ids[: len(rec.prompt_ids)] == rec.prompt_ids:
        ids, stripped = ids[len(rec.prompt_ids):], True
    return Tokenized(ids, None, None, stripped), rec.prompt_ids
