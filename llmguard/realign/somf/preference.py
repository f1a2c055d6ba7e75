"""Preference pairs (prompt, chosen, rejected) for the DPO objective of the mask, tokenised once,
and the fine-tune's own task pairs (prompt, response) for the task-retention term (``--task-data``).

Each pair becomes two sequences, ``format(prompt) + response + EOS``, with the index where the
response starts; only response tokens count in the log-probabilities (as in DPO training). A task
pair is one such sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError


@dataclass(frozen=True)
class EncodedPair:
    chosen: tuple[list[int], int]
    rejected: tuple[list[int], int]


def load_preference(path: Path, *, prompt_field: str, chosen_field: str, rejected_field: str) -> list[dict]:
    from llmguard.eval.safety import read_records

    records = read_records(path, required=[prompt_field, chosen_field, rejected_field], what="preference")
    return [{"prompt": str(r[prompt_field]), "chosen": str(r[chosen_field]), "rejected": str(r[rejected_field])} for r in records]


def load_task(path: Path, *, prompt_field: str, response_field: str, limit: int, seed: int) -> list[dict]:
    """The task pairs of ``--task-data``; a seeded subset of ``limit`` when the file holds more."""
    import random

    from llmguard.io.records import read_records

    try:
        records = read_records(path, required=[prompt_field, response_field], what="task data")
    except InvalidInputError as error:
        raise InvalidInputError(f"--task-data: {error.message} (see --task-prompt-field / --task-response-field)") from None
    rows = [{"prompt": str(r[prompt_field]), "response": str(r[response_field])} for r in records]
    if len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def find_tokenizer(*candidates: Path) -> Any:
    from transformers import AutoTokenizer

    for candidate in candidates:
        path = Path(candidate)
        if path.is_dir() and any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path))
            except Exception:  # noqa: BLE001 - try the next candidate
                continue
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer
    raise InvalidInputError(f"no tokenizer next to {', '.join(str(c) for c in candidates)}: the preference data cannot be tokenised")


def _prompt_ids(tokenizer: Any, prompt: str, template: str, max_length: int, what: str) -> list[int]:
    from llmguard.inference.generate import format_prompt

    ids = tokenizer(format_prompt(tokenizer, prompt, template), add_special_tokens=False)["input_ids"]
    if len(ids) >= max_length:
        raise InvalidInputError(f"{what} prompt {prompt[:40]!r}... is {len(ids)} tokens; raise --max-length")
    return ids


def _sequence(tokenizer: Any, prompt_ids: list[int], response: str, max_length: int) -> tuple[list[int], int]:
    eos = tokenizer.eos_token_id
    ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    return ids[:max_length], len(prompt_ids)


def encode(tokenizer: Any, records: list[dict], *, template: str, max_length: int) -> list[EncodedPair]:
    pairs = []
    for rec in records:
        prompt_ids = _prompt_ids(tokenizer, rec["prompt"], template, max_length, "preference")
        pairs.append(EncodedPair(_sequence(tokenizer, prompt_ids, rec["chosen"], max_length),
                                 _sequence(tokenizer, prompt_ids, rec["rejected"], max_length)))
    return pairs


def encode_task(tokenizer: Any, records: list[dict], *, template: str, max_length: int) -> list[tuple[list[int], int]]:
    """One (ids, response start) sequence per task pair, formatted like the preference pairs."""
    return [_sequence(tokenizer, _prompt_ids(tokenizer, rec["prompt"], template, max_length, "task"), rec["response"], max_length)
            for rec in records]
