"""Instruction/output (SFT) datasets: strict reading, dilution, and an incremental, resumable writer.

The format is the Alpaca/LLaMA-Factory one the CDG-KD recipe trains on: one JSON object per line
with ``instruction``, ``input`` (may be empty) and ``output``. Records written by ``watermark
scrub|spoof`` also carry ``provenance`` (attack, models, rule, sampling, batch and index), so a
dataset mixed from several runs still says where each line came from.

Reading is strict: a broken line is an error naming ``path:line`` (exit 3), found before any
training starts. Writing appends whole batches to a file in the run's partial directory and
flushes them, so an interrupted run resumes at the first batch it did not finish.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError


@dataclass(frozen=True)
class SFTRecord:
    instruction: str
    output: str
    input: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text the model is conditioned on (instruction, then the input on its own line)."""
        return self.instruction if not self.input else f"{self.instruction}\n{self.input}"

    def to_json(self) -> str:
        rec: dict[str, Any] = {"instruction": self.instruction, "input": self.input, "output": self.output}
        if self.provenance:
            rec["provenance"] = self.provenance
        return json.dumps(rec, ensure_ascii=False)


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file ({what})")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a directory, expected a JSONL file ({what})")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InvalidInputError(f"{path}:{line}: not valid UTF-8 (byte {err.start})") from None


def read_sft(path: str | os.PathLike, what: str = "--data") -> list[SFTRecord]:
    """Every record of an SFT JSONL file; any malformed line is an error (nothing is skipped)."""
    p = Path(path)
    records: list[SFTRecord] = []
    for lineno, line in enumerate(_read_text(p, what).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise InvalidInputError(f"{where}: not valid JSON ({what})") from None
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{where}: expected a JSON object with instruction/output ({what})")
        for key in ("instruction", "output"):
            if not isinstance(obj.get(key), str):
                raise InvalidInputError(f"{where}: field {key!r} missing or not a string ({what})")
        inp = obj.get("input", "")
        if not isinstance(inp, str):
            raise InvalidInputError(f"{where}: field 'input' is not a string ({what})")
        prov = obj.get("provenance") if isinstance(obj.get("provenance"), dict) else {}
        records.append(SFTRecord(obj["instruction"], obj["output"], inp, prov))
    if not records:
        raise InvalidInputError(f"{p}: no records ({what})")
    return records


def read_prompts(path: str | os.PathLike, prompt_field: str = "prompt", what: str = "--prompts") -> list[str]:
    """Prompts from JSONL/JSON (``prompt_field``, or ``instruction``[+``input``] of SFT records) or plain lines."""
    from llmguard.watermark.data import parse_records

    p = Path(path)
    content = _read_text(p, what)
    if not content.strip():
        raise InvalidInputError(f"{p}: empty prompt file ({what})")
    head = content.lstrip()[:1]
    if p.suffix.lower() not in (".jsonl", ".json") and head not in ("{", "["):
        lines = [ln for ln in content.splitlines() if ln.strip()]
        return lines
    first = content.lstrip().splitlines()[0]
    try:
        obj = json.loads(first) if head == "{" else None
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and prompt_field not in obj and "instruction" in obj:
        return [r.prompt for r in read_sft(p, what)]
    result = parse_records(content, str(p), text_field=prompt_field)
    if not result.records:
        raise InvalidInputError(f"{p}: no prompts ({what})")
    return [r.text for r in result.records]


def dilute(data: Sequence[SFTRecord], plain: Sequence[SFTRecord], fraction: float, seed: int = 0) -> list[SFTRecord]:
    """Replace ``fraction`` of ``data`` by ``plain`` records (same size; shuffled with ``seed``).

    A student trained on the result inherits a weaker watermark: the weak reference of the
    scrub/spoof attacks, made without a paraphraser.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--dilute must be in (0, 1), got {fraction}")
    n = len(data)
    k = int(round(fraction * n))
    if k > len(plain):
        raise InvalidInputError(f"--dilute {fraction}: needs {k} plain records, --dilute-with has {len(plain)}")
    rng = random.Random(seed)
    keep = list(data)
    rng.shuffle(keep)
    extra = list(plain)
    rng.shuffle(extra)
    mixed = keep[: n - k] + [SFTRecord(r.instruction, r.output, r.input, {**r.provenance, "dilution": "plain"})
                             for r in extra[:k]]
    rng.shuffle(mixed)
    return mixed


class SFTWriter:
    """Append-only JSONL writer for one dataset file; whole batches, flushed and fsynced.

    ``open(resume=True)`` keeps the complete lines already there (a torn last line from a crash is
    cut off) and returns how many there are; the caller restarts at the batch after them.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: Any = None

    def open(self, resume: bool) -> int:
        done = 0
        if resume and self.path.is_file():
            raw = self.path.read_bytes()
            cut = raw.rfind(b"\n") + 1
            good = raw[:cut]
            if cut != len(raw):
                with open(self.path, "r+b") as fh:
                    fh.truncate(cut)
            done = good.count(b"\n")
        elif self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")
        return done

    def write_batch(self, records: Iterable[SFTRecord]) -> int:
        text = "".join(r.to_json() + "\n" for r in records)
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return text.count("\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "SFTWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_sft(path: Path, records: Iterable[SFTRecord]) -> int:
    """Write a whole dataset atomically (:func:`llmguard.io.atomic.atomic_open`)."""
    from llmguard.io.atomic import atomic_open

    n = 0
    with atomic_open(path) as fh:
        for r in records:
            fh.write(r.to_json() + "\n")
            n += 1
    return n
