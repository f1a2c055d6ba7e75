"""Token-level views of a detection: terminal colours (Rich) and a self-contained HTML page."""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

from llmguard.watermark.detect import TextScore, Tokenized

_STATUS = {-1: "context", 0: "red", 1: "green"}


def token_pieces(tok: Tokenized, tokenizer: Any | None) -> list[tuple[str, int | None]]:
    """(piece, token index or None for gaps) covering the text, in order."""
    pieces: list[tuple[str, int | None]] = []
    if tok.offsets is not None and tok.text is not None:
        cursor = 0
        for i, (start, end) in enumerate(tok.offsets):
            if start > cursor:
                pieces.append((tok.text[cursor:start], None))
            pieces.append((tok.text[start:end], i))
            cursor = max(cursor, end)
        if cursor < len(tok.text):
            pieces.append((tok.text[cursor:], None))
        return pieces
    for i, t in enumerate(tok.ids):
        if tokenizer is not None:
            piece = tokenizer.decode([t])
        else:
            piece = str(t)
        if i:
            pieces.append((" ", None))
        pieces.append((piece, i))
    return pieces


def rich_text(tok: Tokenized, score: TextScore, tokenizer: Any | None, no_color: bool) -> Any:
    """A Rich ``Text``: green tokens green, red tokens red, context dim; with NO_COLOR green is «wrapped»."""
    from rich.text import Text

    out = Text()
    for piece, idx in token_pieces(tok, tokenizer):
        if idx is None:
            out.append(piece)
            continue
        status = int(score.token_status[idx])
        counted = bool(score.counted[idx])
        if no_color:
            out.append(f"«{piece}»" if status == 1 else piece)
            continue
        style = {1: "bold green", 0: "red", -1: "dim"}[status]
        if status >= 0 and not counted:
            style += " strike"
        out.append(piece, style=style)
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.text{white-space:pre-wrap;font-family:ui-monospace,monospace;line-height:1.7;border:1px solid #ddd;padding:1em;margin:.5em 0 2em}
.g{background:#b9f5c4}.r{background:#ffc9c9}.c{color:#999}.d{opacity:.55;text-decoration:line-through}
.legend span{padding:0 .4em;margin-right:1em}code{background:#f5f5f5;padding:0 .3em}
"""


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.3e}"


def html_page(
    records: Sequence[dict[str, Any]],
    tokens: Sequence[Tokenized],
    scores: Sequence[TextScore],
    config: dict[str, Any],
    tokenizer: Any | None,
    aggregate: dict[str, Any] | None = None,
) -> str:
    """One self-contained HTML document (inline CSS, no scripts, no external resources)."""
    cfg = " ".join(f"<code>{html.escape(str(k))}={html.escape(str(v))}</code>" for k, v in config.items())
    rows = []
    for r in records:
        rows.append(
            "<tr>"
            f"<td class=l>{html.escape(str(r['where']))}</td><td>{r['num_tokens']}</td><td>{r['num_tokens_scored']}</td>"
            f"<td>{r['num_green_tokens']}</td><td>{_fmt(r['green_fraction'])}</td><td>{_fmt(r['z'])}</td>"
            f"<td>{_fmt(r['log10_p'])}</td><td class=l>{'watermarked' if r['prediction'] else 'no'}</td></tr>"
        )
    blocks = []
    for r, tok, sc in zip(records, tokens, scores):
        spans = []
        for piece, idx in token_pieces(tok, tokenizer):
            if idx is None:
                spans.append(html.escape(piece))
                continue
            status = int(sc.token_status[idx])
            cls = {1: "g", 0: "r", -1: "c"}[status]
            if status >= 0 and not sc.counted[idx]:
                cls += " d"
            title = f"token {idx} id {tok.ids[idx]}: {_STATUS[status]}" + (
                "" if status < 0 or sc.counted[idx] else " (repeat, not counted)"
            )
            spans.append(f'<span class="{cls}" title="{html.escape(title)}">{html.escape(piece)}</span>')
        blocks.append(
            f"<h3>{html.escape(str(r['where']))} — z {_fmt(r['z'])}, log10 p {_fmt(r['log10_p'])}</h3>"
            f"<div class=text>{''.join(spans)}</div>"
        )
    agg = ""
    if aggregate:
        items = "".join(
            f"<tr><td class=l>{html.escape(k)}</td><td class=l>{html.escape(str(v))}</td></tr>"
            for k, v in aggregate.items()
            if not isinstance(v, (list, dict))
        )
        pooled = aggregate.get("pooled") or {}
        items += "".join(
            f"<tr><td class=l>pooled {html.escape(k)}</td><td class=l>{html.escape(str(v))}</td></tr>"
            for k, v in pooled.items()
        )
        agg = f"<h2>Corpus</h2><table>{items}</table>"
    return (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>llmguard watermark detect</title>"
        f"<style>{_CSS}</style></head><body><h1>Watermark detection</h1><p>{cfg}</p>"
        "<p class=legend><span class=g>green</span><span class=r>red</span><span class=c>context (not scored)</span>"
        "<span class='g d'>repeat (not counted)</span></p>"
        "<table><tr><th class=l>text</th><th>tokens</th><th>scored</th><th>green</th><th>green frac</th><th>z</th>"
        f"<th>log10 p</th><th class=l>prediction</th></tr>{''.join(rows)}</table>{agg}{''.join(blocks)}</body></html>\n"
    )
