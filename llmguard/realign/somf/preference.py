"""Preference pairs (prompt, chosen, rejected) for the DPO objective of the mask, tokenised once.

Each pair becomes two sequences, ``format(prompt) + response + EOS``, with the index where the
response starts; only response tokens count in the log-probabilities (as in DPO training).
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


def encode(tokenizer: Any, records: list[dict], *, template: str, max_length: int) -> list[EncodedPair]:
    from llmguard.inference.generate import format_prompt

    eos = tokenizer.eos_token_id
    pairs = []
    for rec in records:
        prompt_ids = tokenizer(format_prompt(tokenizer, rec["prompt"], template), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) >= max_length:
            raise InvalidInputError(f"preference prompt {rec['prompt'][:40]!r}... is {len(prompt_ids)} tokens; raise --max-length")

        def seq(response: str) -> tuple[list[int], int]:
            ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            return ids[:max_length], len(prompt_ids)

        pairs.append(EncodedPair(seq(rec["chosen"]), seq(rec["rejected"])))
    return pairs
