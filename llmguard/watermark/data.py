"""Reading texts to score: plain text, JSONL or a JSON array, from a file or stdin.

Every problem names the file and line (``path:LINE: ...``) and raises
:class:`~llmguard.errors.InvalidInputError` (exit 3), unless ``skip_bad`` is set, in which case the
record is dropped and counted in :attr:`ReadResult.skipped`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError


@dataclass
class Record:
    """One text to score. ``ids`` is set instead of ``text`` when the input carries token ids."""

    index: int
    where: str  # "path:line" (or "path[i]" for a JSON array)
    text: str | None = None
    ids: list[int] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadResult:
    records: list[Record]
    skipped: list[str]  # one message per dropped record
    fmt: str  # "text", "jsonl" or "json"


def _name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def read_source(path: str) -> str:
    """The whole input as text (stdin for ``-``); clear errors for missing/binary files."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        p = Path(path)
        if not p.exists():
            raise InvalidInputError(f"{path}: no such file")
        if p.is_dir():
            raise InvalidInputError(f"{path}: is a directory, expected a text, JSONL or JSON file")
        data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InvalidInputError(f"{_name(path)}:{line}: not valid UTF-8 (byte {err.start})") from None


def _detect_format(path: str, content: str, structured: bool) -> str:
    suffix = Path(path).suffix.lower() if path != "-" else ""
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "json" if content.lstrip().startswith("[") else "jsonl"
    head = content.lstrip()[:1]
    if head == "[" and structured:
        return "json"
    if head == "{" or (structured and head):
        return "jsonl"
    return "text"


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return None


def parse_records(
    content: str,
    path: str = "-",
    *,
    text_field: str | None = None,
    prompt_field: str | None = None,
    ids_field: str | None = None,
    skip_bad: bool = False,
) -> ReadResult:
    """Parse ``content`` into records. Plain text (no field flag, not JSON) is one record."""
    structured = any(f is not None for f in (text_field, prompt_field, ids_field))
    fmt = _detect_format(path, content, structured)
    name = _name(path)
    if fmt == "text":
        if ids_field is not None:
            raise UsageError("--ids-field needs JSONL or JSON input")
        return ReadResult([Record(0, f"{name}:1", text=content)], [], fmt)

    text_field = text_field or ("text" if ids_field is None else None)
    skipped: list[str] = []
    records: list[Record] = []

    def bad(msg: str) -> None:
        if not skip_bad:
            raise InvalidInputError(msg)
        skipped.append(msg)

    items: list[tuple[str, Any]] = []
    if fmt == "json":
        try:
            doc = json.loads(content)
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"{name}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(doc, list):
            raise InvalidInputError(f"{name}: a JSON input must be an array of objects")
        items = [(f"{name}[{i}]", obj) for i, obj in enumerate(doc)]
    else:
        for lineno, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                msg = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                bad(f"{where}: not valid JSON ({msg})")
                continue
            items.append((where, obj))

    for where, obj in items:
        if not isinstance(obj, dict):
            bad(f"{where}: expected a JSON object, got {type(obj).__name__}")
            continue
        rec = Record(len(records), where)
        if ids_field is not None:
            ids = _int_list(obj.get(ids_field))
            if ids is None:
                bad(f"{where}: field {ids_field!r} missing or not a list of integers")
                continue
            if any(i < 0 for i in ids):
                bad(f"{where}: field {ids_field!r} has a negative token id")
                continue
            rec.ids = ids
        else:
            value = obj.get(text_field)
            if not isinstance(value, str):
                what = "missing" if text_field not in obj else f"not a string ({type(value).__name__})"
                bad(f"{where}: field {text_field!r} {what}")
                continue
            rec.text = value
        if prompt_field is not None:
            prompt = obj.get(prompt_field)
            if ids_field is not None and _int_list(prompt) is not None:
                rec.prompt_ids = _int_list(prompt)
            elif isinstance(prompt, str):
                rec.prompt = prompt
            elif prompt is not None:
                bad(f"{where}: field {prompt_field!r} is not a string")
                continue
        if rec.text is not None and not rec.text.strip():
            bad(f"{where}: empty text")
            continue
        if rec.ids is not None and not rec.ids:
            bad(f"{where}: empty token list")
            continue
        rec.meta = {k: v for k, v in obj.items() if k in ("id", "idx", "uid") and isinstance(v, (str, int))}
        records.append(rec)
    if fmt == "text" and not content.strip():
        raise InvalidInputError(f"{name}: empty text")
    return ReadResult(records, skipped, fmt)


def read_texts(path: str, **kwargs: Any) -> ReadResult:
    """The texts (or token ids) to score or prompt from ``path`` (``-``: stdin), at least one."""
    content = read_source(path)
    result = parse_records(content, path, **kwargs)
    if result.fmt == "text" and not content.strip():
        raise InvalidInputError(f"{_name(path)}: empty text")
    if not result.records:
        raise InvalidInputError(f"{_name(path)}: no texts to score" + (" (all records were bad)" if result.skipped else ""))
    return result
