"""NLSR's calibration data: safe (prompt, response) pairs read and tokenised into batches.

The layer-wise pass that turns these batches into per-module input statistics is the streaming
engine in :mod:`llmguard.io.calibration`; this module is the part that knows about prompt
templates (``llmguard.inference``), which the engine must not depend on.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from llmguard.errors import InvalidInputError
from llmguard.io.calibration import CalibrationBatch
from llmguard.io.records import iter_rows

@dataclass
class CalibrationPairs:
    """(prompt, response) pairs read from a file, with what was skipped and why."""

    pairs: list[tuple[str, str]]
    skipped: int = 0
    path: Path | None = None
    first_skipped: str | None = None  # where and why the first row was skipped (for the warning)


def load_pairs(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
    limit: int | None = None,
    seed: int = 42,
    skip_bad: bool = False,
) -> CalibrationPairs:
    """Read (prompt, response) pairs; rows without both fields as non-empty strings are skipped.

    A malformed JSONL line is an error naming its line number unless ``skip_bad``. With
    ``limit`` a seeded random subset of that size is kept (the official NLSR code samples 2,000
    pairs with seed 42). No usable row at all is invalid input.
    """
    source = Path(path)
    if not source.is_file():
        raise InvalidInputError(f"calibration data {source}: no such file")
    pairs: list[tuple[str, str]] = []
    skipped = 0
    first: str | None = None
    for item in iter_rows(source, what="calibration"):
        row = item.value
        if item.error is not None:
            if not skip_bad:
                raise InvalidInputError(f"{item.where}: {item.error} (pass --skip-bad to skip such lines)")
            skipped += 1
            first = first or f"{item.where}: {item.error}"
            continue
        prompt = row.get(prompt_field) if isinstance(row, dict) else None
        response = row.get(response_field) if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
            skipped += 1
            why = "not a JSON object" if not isinstance(row, dict) else f"no non-empty string fields {prompt_field!r} and {response_field!r}"
            first = first or f"{item.where}: {why}"
            continue
        pairs.append((prompt, response))
    if not pairs:
        raise InvalidInputError(
            f"{source}: no usable calibration rows (need non-empty string fields {prompt_field!r} and {response_field!r}; "
            f"{skipped} row(s) skipped, first {first or '-'})"
        )
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return CalibrationPairs(pairs, skipped, source, first)


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one vocabulary entry spans (at least 1): N tokens never cover more than
    N times this, so a string can be cut to that many characters before it is tokenised."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: a generous bound
        return 64
    return max((len(t) for t in vocab), default=1) or 1


def keep_head(text: str, tokens: int, longest: int) -> str:
    """The start of ``text`` that surely holds its first ``tokens`` tokens (two spare for the cut)."""
    budget = (tokens + 2) * longest
    return text if len(text) <= budget else text[:budget]


def keep_tail(text: str, tokens: int, longest: int) -> str:
    """The end of ``text`` that surely holds its last ``tokens`` tokens (prompts lose tokens on the left)."""
    budget = (tokens + 2) * longest
    return text if len(text) <= budget else text[-budget:]


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    template: str = "auto",
    max_length: int = 512,
    max_response_tokens: int = 256,
    batch_tokens: int = 8192,
    response_only: bool = True,
) -> list[CalibrationBatch]:
    """Tokenise prompt + response and batch by length; only response tokens are selected.

    The prompt is formatted with :func:`llmguard.inference.generate.format_prompt` (the same
    template generation uses); the response is cut to ``max_response_tokens`` and ends with EOS;
    too-long prompts lose tokens on the left. Batches hold at most ``batch_tokens`` padded tokens.
    """
    from llmguard.inference.generate import format_prompt

    encoded: list[tuple[list[int], int]] = []
    eos = tokenizer.eos_token_id
    longest = longest_token_chars(tokenizer)
    for prompt, response in pairs:
        # cut the strings before tokenising: one 50 MB record took 167 s and 9.6 GB when tokenised whole
        prompt = keep_tail(prompt, max_length, longest)
        response = keep_head(response, min(max_response_tokens, max_length), longest)
        text = format_prompt(tokenizer, prompt, template)
        bos = getattr(tokenizer, "bos_token", None)
        # special tokens as generation adds them (llmguard.inference.generate.tokenize_prompts)
        prompt_ids = list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])
        response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])[:max_response_tokens]
        if eos is not None:
            response_ids.append(eos)
        if not response_ids:
            continue
        room = max(1, max_length - len(response_ids))
        prompt_ids = prompt_ids[-room:]
        ids = (prompt_ids + response_ids)[:max_length]
        start = len(prompt_ids) if response_only else 0
        if start >= len(ids):
            continue
        encoded.append((ids, start))
    if not encoded:
        raise InvalidInputError("calibration data: no row has response tokens after tokenisation")
    encoded.sort(key=lambda item: len(item[0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    batches: list[CalibrationBatch] = []
    group: list[tuple[list[int], int]] = []

    def flush() -> None:
        width = max(len(ids) for ids, _ in group)
        input_ids = torch.full((len(group), width), pad, dtype=torch.long)
        attention = torch.zeros((len(group), width), dtype=torch.long)
        select = torch.zeros((len(group), width), dtype=torch.bool)
        for row, (ids, start) in enumerate(group):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            select[row, start : len(ids)] = True
        batches.append(CalibrationBatch(input_ids, attention, select))

    for item in encoded:
        if group and len(item[0]) * (len(group) + 1) > batch_tokens:
            flush()
            group = []
        group.append(item)
    flush()
    return batches


