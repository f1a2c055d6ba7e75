"""Parsers for judge outputs that record what went wrong instead of inventing a score.

Every parser returns a :class:`ParseResult` whose ``status`` is one of

- ``ok``: every expected score found once (or repeated with the same value) and in range;
- ``empty``: the judge produced nothing but whitespace;
- ``missing_field``: an expected sub-aspect or score marker is absent (``missing`` lists them);
- ``out_of_range``: a score outside the preset's scale (or given "out of" another maximum);
- ``conflict``: the same sub-aspect scored twice with different values;
- ``truncated``: fields are missing and the output hit the generation limit.

Only scores that parsed cleanly are returned; nothing is defaulted. Scores are read from the
judge's *output* only, never from the prompt, and a header that appears several times (the
judge echoing the answer format, whose ``Score: <score>`` has no number) is resolved by
taking the blocks that carry a number: the prometheus-eval failure where the template's
"between 1 and 5" was parsed as the score cannot happen here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STATUS_ORDER = ("empty", "truncated", "conflict", "out_of_range", "missing_field")

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_RE = re.compile(
    r"score\s*[:=]\s*[*_\s]*" + _NUMBER + r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
_ANALYSIS_RE = re.compile(r"analysis\s*:\s*(.*?)(?=\n\s*[*_]*\s*score\s*[:=]|\Z)", re.IGNORECASE | re.DOTALL)


@dataclass
class ParseResult:
    status: str
    scores: dict[str, float] = field(default_factory=dict)
    analyses: dict[str, str] = field(default_factory=dict)
    sub_status: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "parse_status": self.status,
            "scores": self.scores,
            "analyses": self.analyses,
            "sub_status": self.sub_status,
            "parse_detail": self.detail,
        }


def _check_range(value: float, denominator: str | None, scale: tuple[float, float]) -> str:
    lo, hi = scale
    if denominator is not None and float(denominator) != hi:
        return "out_of_range"
    if value < lo or value > hi:
        return "out_of_range"
    return "ok"


def _read_score(block: str, scale: tuple[float, float], marker_re: re.Pattern[str] = _SCORE_RE) -> tuple[float | None, str]:
    """Last score marker with a number in ``block`` (anchored at the end of the block)."""
    matches = list(marker_re.finditer(block))
    if not matches:
        return None, "missing_field"
    m = matches[-1]
    value = float(m.group(1))
    return value, _check_range(value, m.group(2), scale)


def _combine(sub_status: dict[str, str], truncated: bool) -> str:
    bad = [s for s in sub_status.values() if s != "ok"]
    if not bad:
        return "ok"
    if truncated and "missing_field" in bad:
        return "truncated"
    for status in STATUS_ORDER:
        if status in bad:
            return status
    return bad[0]


def _header_re(key: str, name: str | None) -> re.Pattern[str]:
    # "Context Awareness (CONT):" or "(CONT):" or "**CONT**:", at the start of a line
    named = rf"(?:{re.escape(name)}\s*)?" if name else ""
    return re.compile(
        rf"(?im)^[ \t>#*_-]*(?:{named}\(\s*{re.escape(key)}\s*\)|{re.escape(key)})[ \t*_]*:"
    )


def parse_sub_aspects(
    text: str,
    sub_aspects: Sequence[tuple[str, str | None]],
    scale: tuple[float, float],
    *,
    truncated: bool = False,
) -> ParseResult:
    """Parse ``<Name> (<KEY>):\\nAnalysis: ...\\nScore: n`` blocks for each ``(key, name)``."""
    if not text or not text.strip():
        return ParseResult(status="empty", sub_status={k: "missing_field" for k, _ in sub_aspects},
                           missing=[k for k, _ in sub_aspects], detail="empty output")
    headers: list[tuple[int, int, str]] = []
    for key, name in sub_aspects:
        for m in _header_re(key, name).finditer(text):
            headers.append((m.start(), m.end(), key))
    headers.sort()
    blocks: dict[str, list[str]] = {k: [] for k, _ in sub_aspects}
    for i, (_, end, key) in enumerate(headers):
        stop = headers[i + 1][0] if i + 1 < len(headers) else len(text)
        blocks[key].append(text[end:stop])
    result = ParseResult(status="ok")
    details = []
    for key, _ in sub_aspects:
        found = [(blk, *_read_score(blk, scale)) for blk in blocks[key]]
        numeric = [(blk, v, st) for blk, v, st in found if v is not None]
        if not numeric:
            result.sub_status[key] = "missing_field"
            result.missing.append(key)
            details.append(f"{key}: {'no header' if not found else 'no score'}")
            continue
        values = {v for _, v, _ in numeric}
        if len(values) > 1:
            result.sub_status[key] = "conflict"
            details.append(f"{key}: scored {sorted(values)}")
            continue
        blk, value, status = numeric[-1]
        result.sub_status[key] = status
        if status != "ok":
            details.append(f"{key}: {value:g} outside {scale[0]:g}..{scale[1]:g}")
            continue
        result.scores[key] = value
        m = _ANALYSIS_RE.search(blk)
        if m:
            result.analyses[key] = m.group(1).strip()
    result.status = _combine(result.sub_status, truncated)
    if result.status != "ok":
        result.scores = {} if result.status in ("empty",) else result.scores
        result.detail = "; ".join(details) or None
    return result


_RESPONSE_RE = re.compile(r"(?im)^[ \t#*_]*evaluation\s+of\s+response\s+([12])[ \t*_]*:?")


def parse_pairwise(
    text: str,
    sub_aspects: Sequence[tuple[str, str | None]],
    scale: tuple[float, float],
    *,
    truncated: bool = False,
) -> dict[str, ParseResult]:
    """Split on ``Evaluation of Response k:`` and parse each part; keys ``"1"`` and ``"2"``.

    When a response header occurs several times (an echoed format), the part with the most
    valid scores wins (the later one on a tie).
    """
    out: dict[str, ParseResult] = {}
    if not text or not text.strip():
        for slot in ("1", "2"):
            out[slot] = parse_sub_aspects("", sub_aspects, scale)
        return out
    marks = list(_RESPONSE_RE.finditer(text))
    parts: dict[str, list[str]] = {"1": [], "2": []}
    for i, m in enumerate(marks):
        stop = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        parts[m.group(1)].append(text[m.end():stop])
    for slot in ("1", "2"):
        if not parts[slot]:
            res = ParseResult(
                status="truncated" if truncated else "missing_field",
                sub_status={k: "missing_field" for k, _ in sub_aspects},
                missing=[k for k, _ in sub_aspects],
                detail=f"no 'Evaluation of Response {slot}:' section",
            )
            out[slot] = res
            continue
        candidates = [parse_sub_aspects(p, sub_aspects, scale, truncated=truncated) for p in parts[slot]]
        best = max(enumerate(candidates), key=lambda ic: (sum(1 for s in ic[1].sub_status.values() if s == "ok"), ic[0]))
        out[slot] = best[1]
    return out


def marker_pattern(marker: str) -> re.Pattern[str]:
    """A score pattern for a marker such as ``Final Score`` (``Final Score: 4``, ``4/5``)."""
    return re.compile(
        rf"{re.escape(marker)}\s*[:=]\s*[*_\s]*" + _NUMBER + r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?",
        re.IGNORECASE,
    )


def parse_marked_score(
    text: str, marker: str, scale: tuple[float, float], *, key: str = "score", truncated: bool = False
) -> ParseResult:
    """One score after the last ``marker:`` in the output, plus the text before it as analysis."""
    if not text or not text.strip():
        return ParseResult(status="empty", sub_status={key: "missing_field"}, missing=[key], detail="empty output")
    pattern = marker_pattern(marker)
    matches = list(pattern.finditer(text))
    if not matches:
        status = "truncated" if truncated else "missing_field"
        return ParseResult(status=status, sub_status={key: "missing_field"}, missing=[key],
                           detail=f"no '{marker}: <number>' in the output")
    m = matches[-1]
    value = float(m.group(1))
    status = _check_range(value, m.group(2), scale)
    analysis = text[: m.start()].strip()
    if status != "ok":
        return ParseResult(status=status, sub_status={key: status}, analyses={key: analysis},
                           detail=f"{key}: {value:g} outside {scale[0]:g}..{scale[1]:g}")
    return ParseResult(status="ok", scores={key: value}, analyses={key: analysis}, sub_status={key: "ok"})
