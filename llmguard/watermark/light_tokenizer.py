"""A tokenizer for detection that starts without torch or transformers.

Detecting a watermark needs only token ids (and character offsets for the views). Loading the
tokenizer through ``transformers.AutoTokenizer`` imports torch, about 4 s of a 5 s start-up
that scoring 120k tokens takes 0.6 s of. A plain ``tokenizers`` backend, which is what
transformers' generic fast tokenizer (``TokenizersBackend`` / ``PreTrainedTokenizerFast``)
wraps, gives the same ids: :func:`load_light_tokenizer` returns one for such a directory (or a
bare ``tokenizer.json``) and None for anything else (a model-specific tokenizer class, special
tokens the backend does not know), which then loads through transformers as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: tokenizer classes that are the ``tokenizers`` backend and nothing more
GENERIC_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class LightTokenizer:
    """The slice of a transformers fast tokenizer that detection uses: ``__call__`` with offsets,
    ``decode``, ``len``, ``bos_token_id``, ``is_fast``."""

    is_fast = True

    def __init__(self, backend: Any, bos_token: str | None = None) -> None:
        self._backend = backend
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict[str, Any]:
        enc = self._backend.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, Any] = {"input_ids": list(enc.ids)}
        if return_offsets_mapping:
            out["offset_mapping"] = [tuple(o) for o in enc.offsets]
        return out

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)


def _token(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older configs
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_light_tokenizer(path: str | Path) -> LightTokenizer | None:
    """A :class:`LightTokenizer` for a generic fast tokenizer at ``path``; None when transformers
    must load it (then nothing here has imported torch)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    p = Path(path)
    config: dict[str, Any] = {}
    if p.is_file() and p.suffix == ".json":
        file = p
    elif p.is_dir() and (p / "tokenizer.json").is_file() and (p / "tokenizer_config.json").is_file():
        file = p / "tokenizer.json"
        try:
            config = json.loads((p / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            return None
        if (config.get("tokenizer_class") not in GENERIC_CLASSES or config.get("auto_map")
                or config.get("clean_up_tokenization_spaces")):  # decode would differ from transformers'
            return None
    else:
        return None
    try:
        backend = Tokenizer.from_file(str(file))
    except Exception:  # noqa: BLE001 - let transformers report the problem in its words
        return None
    specials = [_token(config.get(k)) for k in _SPECIAL_KEYS] + [_token(t) for t in config.get("extra_special_tokens") or []]
    if any(t is not None and backend.token_to_id(t) is None for t in specials):
        return None  # transformers would add these tokens: lengths and ids could differ
    return LightTokenizer(backend, _token(config.get("bos_token")))
