"""Reading data records: JSONL, a JSON list, CSV/TSV or Parquet, one reader for every verb.

:func:`iter_rows` yields every row with where it came from (``path:LINE``, or ``path: record N``
in a JSON list) and, for a JSONL line that does not parse, the error instead of a value, so a
caller can skip bad lines (``--skip-bad``) or stop at the first. :func:`read_records` is the
strict form: JSON objects only, required fields present, one-line errors naming file, line and
field (exit 3). Parquet is read through ``datasets``; the rest needs no dependency. A suffix
other than ``.json``, ``.csv``, ``.tsv`` or ``.parquet`` is read as JSONL.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError



def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold one object (a config, a preset): one error line naming the file
    and ``what`` it is for undecodable bytes, invalid JSON, an unreadable file or another type."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"{path}: {what} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}: {what} is not valid JSON (line {err.lineno}: {err.msg})") from None
    except OSError as err:
        raise InvalidInputError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: {what} must be a JSON object, not a {type(data).__name__}")
    return data

@dataclass(frozen=True)
class Row:
    """One record of a data file: its place, its value, or why it could not be read."""

    where: str
    number: int  # line (JSONL, CSV) or 1-based record index (JSON, Parquet)
    value: Any = None
    error: str | None = None


def iter_rows(path: str | os.PathLike[str], *, what: str = "data") -> Iterator[Row]:
    """Every row of ``path`` in order (see the module docstring for the formats)."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: {what} file does not exist")
    if p.is_dir():
        raise InvalidInputError(f"{p}: {what} must be a file, not a directory")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            yield from _json_rows(p, what)
        elif suffix in (".csv", ".tsv"):
            with open(p, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                for i, record in enumerate(reader):
                    yield Row(f"{p}:{i + 2}", i + 2, dict(record))
        elif suffix == ".parquet":
            # pyarrow directly (datasets' loader logs the failure of a garbage file on stderr and
            # caches a copy of every file it reads)
            import pyarrow.parquet as pq

            try:
                records = pq.read_table(str(p)).to_pylist()
            except Exception as err:  # noqa: BLE001 - any reader failure is bad input
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise InvalidInputError(f"{p}: not a readable Parquet file ({type(err).__name__}: {first})") from None
            for i, record in enumerate(records, 1):
                yield Row(f"{p}:{i}", i, record)
        else:
            with open(p, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        yield Row(f"{p}:{lineno}", lineno, json.loads(line))
                    except json.JSONDecodeError as err:
                        yield Row(f"{p}:{lineno}", lineno, error=f"not valid JSON ({err.msg})")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{p}:{_first_bad_utf8_line(p)}: {what} file is not UTF-8 text") from None


def _first_bad_utf8_line(p: Path) -> int:
    """The line holding the first byte that is not UTF-8 (read again in binary: the text reader
    only says that decoding failed somewhere in its buffer)."""
    raw = p.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return raw[: err.start].count(b"\n") + 1
    return 1


def _json_rows(p: Path, what: str) -> Iterator[Row]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{p}:{err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(data, dict):  # {"data": [...]}, or the first list it holds
        data = data["data"] if "data" in data else next((v for v in data.values() if isinstance(v, list)), data)
    if not isinstance(data, list):
        raise InvalidInputError(f"{p}: a .json {what} file must hold a list of records")
    for i, record in enumerate(data, 1):
        yield Row(f"{p}: record {i}", i, record)


def read_records(path: str | os.PathLike[str], *, required: Sequence[str] = (), what: str = "data") -> list[dict]:
    """Every record of ``path`` as a dict; the first bad line, non-object or missing field is an error."""
    out = []
    for row in iter_rows(path, what=what):
        if row.error is not None:
            raise InvalidInputError(f"{row.where}: {row.error}")
        rec = row.value
        if not isinstance(rec, dict):
            raise InvalidInputError(f"{row.where}: expected a JSON object, got {type(rec).__name__}")
        for name in required:
            if name not in rec or rec[name] is None:
                raise InvalidInputError(f"{row.where}: field {name!r} is missing")
            if not isinstance(rec[name], (str, int, float)):
                raise InvalidInputError(f"{row.where}: field {name!r} must be a string")
            if isinstance(rec[name], str) and not rec[name].strip():
                raise InvalidInputError(f"{row.where}: field {name!r} is empty")
        out.append(rec)
    if not out:
        raise InvalidInputError(f"{Path(path)}: {what} file has no records")
    return out
