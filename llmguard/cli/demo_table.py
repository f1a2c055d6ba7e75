"""The demo's before/after table as plain text that reads at 80 columns.

One section per step (its name and time once), one row per measured model: the model the row
starts from and, when the step produced a model, ``→ output`` on the next line; every number as
``before → after`` when the row has a before. A legend says what each column measures, its
unit and which direction is better. Plain text (not a Rich table) so that no column is ever
shrunk to an ellipsis or a word split: long labels wrap at spaces, numbers never wrap. Piped
output gets the same layout at the width it needs.
"""

from __future__ import annotations

import textwrap
from typing import Any

#: column header, unit and direction, shown under the table and in the ``--json`` document
LEGEND: dict[str, str] = {
    "harmful %": "harmful answers to the held-out harmful prompts (keyword judge + the testbed's harmful phrases); lower is better",
    "refusal %": "refusals of the same prompts; higher is better",
    "task %": "exact-match accuracy on the row's task (sst2 or arith) test split; higher is better",
    "z": "wm z / judge column: median KGW z-score of the model's texts with the teacher's key; watermarked when z > 4 "
            "(scrub wants it low, spoof high)",
    "guard=kw %": "wm z / judge column: share of harmful-prompt verdicts on which the guard model agrees with the keyword judge; higher is better",
    "r": "wm z / judge column: mean Pearson r of the judge's scores against the known labels; higher is better",
    "a → b": "the input model's number → the number of the model the step wrote",
    "reused": "a note saying 'reused' marks the stored result of the identical command (same flags, same bytes of every "
              "input, same code and library versions: llmguard/cli/demo_cache.py); `llmguard demo --fresh` runs it again",
}

_COLUMNS = (("harmful %", 11), ("refusal %", 11), ("task %", 16), ("wm z / judge", 13))


def _pct(x: float | None) -> str:
    if x is None:
        return ""
    v = 100 * x
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def _z(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def _pair(before: Any, after: Any, fmt) -> str:
    a = fmt(after)
    if before is None or a == "":
        return a
    return f"{fmt(before)} → {a}"


def row_cells(row: Any) -> list[str]:
    """The four number cells of a row (harmful, refusal, task, other)."""
    before = row.before or {}
    task = _pair(before.get("task_accuracy"), row.task_accuracy, _pct)
    other = ""
    if row.watermark_z is not None:
        other = "z " + _pair(before.get("watermark_z"), row.watermark_z, _z)
    elif row.guard_vs_keyword is not None:
        other = f"guard=kw {_pct(row.guard_vs_keyword)}"
    elif row.judge_vs_labels_r is not None:
        other = f"r {row.judge_vs_labels_r:.2f}"
    return [_pair(before.get("harmful_rate"), row.harmful_rate, _pct),
            _pair(before.get("refusal_rate"), row.refusal_rate, _pct),
            f"{row.task} {task}" if task and row.task else task, other]


def render(result: Any, width: int | None = 80) -> str:
    """The table, sections and legend as lines of at most ``width`` characters (labels wrap);
    ``width=None`` (piped output): as wide as the longest label needs, nothing wraps."""
    numbers = sum(w for _, w in _COLUMNS) + len(_COLUMNS)
    needed = max([len(f"  {r.model}") for r in result.rows] + [len(f"    → {r.output}") for r in result.rows if r.output] + [16])
    label_width = max(16, min(needed, width - numbers)) if width else needed
    width = width or 10_000
    seconds = {s.name: s for s in result.steps}
    header = f"{'model (→ output)':<{label_width}}" + "".join(f" {h:>{w}}" for h, w in _COLUMNS)
    lines = [header.rstrip(), "-" * min(width, len(header))]
    previous: tuple[str, str] | None = None
    for row in result.rows:
        if (row.step_name, row.step) != previous:  # a new section; the step's time on its first one
            timing = seconds.get(row.step_name)
            took = f" · {timing.seconds:.0f} s" if timing is not None and row.step_name != (previous or ("",))[0] else ""
            lines.extend(textwrap.wrap(f"{row.step}{took}" + ("" if row.ok else "  FAILED"), width, subsequent_indent="  ",
                                       break_long_words=False, break_on_hyphens=False))
        previous = (row.step_name, row.step)
        label = f"  {row.model}"
        out = f"    → {row.output}" if row.output else None
        cells = row_cells(row) if row.ok else ["", "", "", ""]
        first = textwrap.wrap(label, label_width, subsequent_indent="    ", break_long_words=False) or [""]
        lines.append(f"{first[0]:<{label_width}}" + "".join(f" {c:>{w}}" for c, (_, w) in zip(cells, _COLUMNS)))
        lines.extend(first[1:])
        if out:
            lines.extend(textwrap.wrap(out, max(label_width, width), subsequent_indent="      ", break_long_words=False))
        if row.note:
            lines.extend(textwrap.wrap(row.note, width, initial_indent="    ", subsequent_indent="    ",
                                       break_long_words=False, break_on_hyphens=False))
    lines.append("")
    for key, text in LEGEND.items():
        lines.extend(textwrap.wrap(f"{key}: {text}", width, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False))
    return "\n".join(line.rstrip() for line in lines)
