"""Judge input items (JSONL) and the append-only JSONL results file with ``--resume``.

An item is one JSON object per line. Field names are configurable (``FieldMap``); an item
that lacks a required field is not fatal: it becomes an :class:`Item` with ``error`` set, and
the judge runners write an ``input_error`` record for it and go on. A line that is not JSON
stops the run with its line number (exit 3) unless ``skip_bad`` is set, in which case it too
becomes an error item.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.records import iter_rows


@dataclass(frozen=True)
class FieldMap:
    id: str = "id"
    question: str = "question"
    answer: str = "answer"
    answer_b: str = "answer_b"
    reference: str = "reference"
    image: str = "image"
    group: str | None = None
    keep: tuple[str, ...] = ()


@dataclass
class Item:
    id: str
    line: int
    question: str | None = None
    answer: str | None = None
    answer_b: str | None = None
    reference: str | None = None
    image: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None


def read_items(
    path: str | Path,
    fields: FieldMap,
    *,
    need_answer_b: bool = False,
    need_image: bool = False,
    skip_bad: bool = False,
) -> list[Item]:
    """Read and validate items; per-item problems are recorded on the item, not raised."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: input file does not exist")
    items: list[Item] = []
    seen: dict[str, int] = {}
    for row in iter_rows(path, what="input"):
        lineno, obj = row.number, row.value
        if row.error is not None or not isinstance(obj, dict):
            msg = f"{row.where}: not a JSON object ({row.error or 'got ' + type(obj).__name__})"
            if not skip_bad:
                raise InvalidInputError(msg + "; pass --skip-bad to record it and go on")
            items.append(Item(id=f"line-{lineno}", line=lineno, error=msg))
            continue
        raw_id = obj.get(fields.id)
        item_id = _text(raw_id)
        if item_id is None or item_id == "":
            items.append(Item(id=f"line-{lineno}", line=lineno,
                              error=f"{path}:{lineno}: missing id field '{fields.id}'"))
            continue
        if item_id in seen:
            raise InvalidInputError(
                f"{path}:{lineno}: id {item_id!r} already used on line {seen[item_id]} (ids must be unique)"
            )
        seen[item_id] = lineno
        item = Item(id=item_id, line=lineno)
        item.question = _text(obj.get(fields.question))
        item.answer = _text(obj.get(fields.answer))
        item.answer_b = _text(obj.get(fields.answer_b))
        item.reference = _text(obj.get(fields.reference))
        image = obj.get(fields.image)
        item.image = image if isinstance(image, str) and image else None
        if fields.group:
            item.group = _text(obj.get(fields.group))
        if item.group is None and item.question is not None:
            item.group = "q:" + hashlib.sha256(item.question.encode()).hexdigest()[:16]
        item.meta = {k: obj[k] for k in fields.keep if k in obj}
        required = [(fields.question, item.question), (fields.answer, item.answer)]
        if need_answer_b:
            required.append((fields.answer_b, item.answer_b))
        if need_image:
            required.append((fields.image, item.image))
        missing = [name for name, value in required if value is None or (isinstance(value, str) and not value.strip())]
        if missing:
            item.error = f"{path}:{lineno}: item {item_id!r} has no (or an empty) field " + ", ".join(
                repr(m) for m in missing
            )
        items.append(item)
    if not items:  # every other verb refuses an empty input; a judge run over nothing is not a result
        raise InvalidInputError(f"{path}: input file has no items")
    return items


class ResultsFile:
    """Append-only JSONL results with resume.

    Without ``resume`` an existing file is refused unless ``force`` (then replaced). With
    ``resume`` the records already there are read (a torn last line from an interrupted run
    is cut off) and :meth:`done` tells which record keys to skip.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, force: bool = False,
                 inputs: Iterable[str | Path | None] = ()) -> None:
        from llmguard.io.output_safety import OutputLock, check_output, disk_error

        self.path = Path(path)
        self.existing: list[dict[str, Any]] = []
        # never the items (or any other input): --force would truncate them, --resume append to them
        sources = [Path(p) for p in inputs if p is not None]
        if self.path.exists() and not resume and not force:
            raise UsageError(f"{self.path}: exists; pass --resume to continue it or --force to replace it")
        check_output(self.path, sources, force=True, kind="file")
        self._lock = OutputLock(self.path).acquire()  # a second run on the same results fails (exit 4)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.path.exists():
                self._load_existing()
                mode = "a"
            else:
                mode = "w"
            self._handle = open(self.path, mode, encoding="utf-8")
        except OSError as err:
            self._lock.release()
            raise disk_error(err, self.path) from None
        except BaseException:
            self._lock.release()
            raise

    def _load_existing(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        for raw in data.splitlines(keepends=True):
            pos += len(raw)
            if not raw.endswith(b"\n"):
                break  # torn last line
            try:
                self.existing.append(json.loads(raw))
                good_end = pos
            except json.JSONDecodeError:
                if pos == len(data):
                    break
                raise InvalidInputError(f"{self.path}: line {len(self.existing) + 1} is not JSON; cannot resume") from None
        if good_end != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each line whole: a disk-full error cuts back to the last whole line)."""
        from llmguard.io.output_safety import disk_error

        start = self._handle.tell()
        try:
            for rec in records:
                self._handle.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as err:
            try:
                self._handle.truncate(start)
            except OSError:
                pass
            raise disk_error(err, self.path) from None

    def close(self) -> None:
        try:
            self._handle.close()
        finally:
            self._lock.release()

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_jsonl(path: str | Path, what: str) -> list[dict[str, Any]]:
    """All JSON objects of a JSONL file, each with its ``_line`` (a bad line is an error naming it)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: {what} file does not exist")
    out = []
    for row in iter_rows(path, what=what):
        if row.error is not None:
            raise InvalidInputError(f"{row.where}: {row.error}")
        if not isinstance(row.value, dict):
            raise InvalidInputError(f"{row.where}: not a JSON object")
        row.value.setdefault("_line", row.number)
        out.append(row.value)
    return out
