"""``llmguard eval agree``: judge results vs human labels, per criterion, with bootstrap CIs.

Inputs:

- predictions: the JSONL written by ``eval hdc`` / ``eval ace-m3`` (records with
  ``parse_status``; unparsed records are counted, never scored), or any JSONL whose records
  carry ``id`` and either ``criterion`` + numeric ``score`` or a ``scores`` object of numbers;
  pairwise HDC records carry scores per answer (``a``/``b``) and their presentation ``order``;
- human labels: JSONL with the id and either one field per criterion (wide: ``{"id": 1,
  "CONT": 4, "REL": 3.7}``, also nested under ``human``/``labels``/``scores``) or
  ``criterion`` + ``score`` (long); for pairwise items a ``response`` (``a``/``b`` or 1/2)
  field says which answer the line labels.

The unit of analysis is (item, answer, criterion). Scores from both orders of a swapped
pairwise run are averaged for the sample-level metrics. Pairs for pairwise accuracy are the
two answers of a pairwise item, or, for single-mode results, every two answers in the same
group (``group``: the same question). Bootstrap intervals resample groups (items), not rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmguard.errors import InvalidInputError, UsageError
from llmguard.eval import agreement as ag

RESERVED = {"id", "response", "slot", "group", "_line", "line", "criterion", "score", "rater", "meta"}


@dataclass
class PredRow:
    id: str
    slot: str | None
    criterion: str
    score: float
    order: str | None
    group: str
    meta: dict[str, Any] = field(default_factory=dict)


def _slot(value: Any) -> str | None:
    if value is None:
        return None
    v = str(value).strip().lower()
    return {"1": "a", "2": "b", "a": "a", "b": "b"}.get(v, v)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and not math.isnan(float(value)):
        return float(value)
    return None


def pred_rows(records: Sequence[dict[str, Any]], id_field: str = "id") -> tuple[list[PredRow], dict[str, int]]:
    """Flatten result records into scored rows; returns (rows, unparsed count per criterion)."""
    rows: list[PredRow] = []
    unparsed: dict[str, int] = defaultdict(int)
    for rec in records:
        rid = rec.get(id_field)
        if rid is None:
            continue
        rid = str(rid)
        group = str(rec.get("group") or rid)
        meta = rec.get("meta") or {}
        crit = rec.get("criterion")
        status = rec.get("parse_status", "ok")
        if status != "ok":
            if crit is not None:
                unparsed[str(crit)] += 1
            subs = rec.get("sub_status") or {}
            keys = set()
            for k, v in subs.items():
                keys.update(v.keys() if isinstance(v, dict) else [k])
            for k in keys:
                unparsed[str(k)] += 1
            continue
        order = rec.get("order") if rec.get("mode") == "pairwise" else None
        scores = rec.get("scores")
        score = rec.get("score")
        if rec.get("mode") == "pairwise" and isinstance(scores, dict):
            for slot in ("a", "b"):
                subs = scores.get(slot) or {}
                for k, v in subs.items():
                    if _num(v) is not None:
                        rows.append(PredRow(rid, slot, str(k), float(v), order, group, meta))
                if isinstance(score, dict) and _num(score.get(slot)) is not None and crit is not None:
                    rows.append(PredRow(rid, slot, str(crit), float(score[slot]), order, group, meta))
            continue
        slot = _slot(rec.get("response") or rec.get("slot"))
        if isinstance(scores, dict):
            for k, v in scores.items():
                if _num(v) is not None:
                    rows.append(PredRow(rid, slot, str(k), float(v), order, group, meta))
        if crit is not None and _num(score) is not None:
            rows.append(PredRow(rid, slot, str(crit), float(score), order, group, meta))
    return rows, dict(unparsed)


def human_table(records: Sequence[dict[str, Any]], id_field: str = "id") -> dict[tuple[str, str | None, str], float]:
    """(id, slot, criterion) -> human score (mean over duplicate lines)."""
    acc: dict[tuple[str, str | None, str], list[float]] = defaultdict(list)
    for rec in records:
        if rec.get(id_field) is None:
            raise InvalidInputError(f"human labels line {rec.get('_line')}: no '{id_field}' field")
        rid = str(rec[id_field])
        slot = _slot(rec.get("response") or rec.get("slot"))
        if "criterion" in rec and "score" in rec:
            v = _num(rec["score"])
            if v is not None:
                acc[(rid, slot, str(rec["criterion"]))].append(v)
            continue
        source = rec
        for nested in ("human", "labels", "scores"):
            if isinstance(rec.get(nested), dict):
                source = rec[nested]
                break
        for k, v in source.items():
            if k in RESERVED or k == id_field:
                continue
            value = _num(v)
            if value is not None:
                acc[(rid, slot, str(k))].append(value)
    return {k: float(np.mean(v)) for k, v in acc.items()}


@dataclass
class Cell:
    name: dict[str, Any]
    judge: np.ndarray
    human: np.ndarray
    clusters: np.ndarray  # cluster index per row
    pairs: np.ndarray  # (m, 2) row indices
    pair_clusters: np.ndarray
    swap: list[tuple[float, float]]
    n_clusters: int
    unparsed: int = 0
    unmatched: int = 0


def _sample_metrics(j: np.ndarray, h: np.ndarray) -> dict[str, float]:
    return {name: fn(j, h) for name, fn in ag.SAMPLE_METRICS.items()}


def _pair_metrics(j: np.ndarray, h: np.ndarray, pairs: np.ndarray, tie: float) -> dict[str, float]:
    if len(pairs) == 0:
        return {"pairwise_accuracy_without_ties": math.nan, "pairwise_accuracy_with_ties": math.nan}
    jd = j[pairs[:, 0]] - j[pairs[:, 1]]
    hd = h[pairs[:, 0]] - h[pairs[:, 1]]
    res = ag.pairwise_accuracy(jd, hd, tie_threshold=tie)
    return {"pairwise_accuracy_without_ties": res["without_ties"], "pairwise_accuracy_with_ties": res["with_ties"]}


def build_cells(
    rows: list[PredRow],
    human: dict[tuple[str, str | None, str], float],
    unparsed: dict[str, int],
    by: Sequence[str],
    criteria: Sequence[str] | None = None,
) -> list[Cell]:
    # average over presentation orders, keep per-order diffs for swap consistency
    merged: dict[tuple[str, str | None, str], list[PredRow]] = defaultdict(list)
    for r in rows:
        if criteria and r.criterion not in criteria:
            continue
        merged[(r.id, r.slot, r.criterion)].append(r)
    cells: dict[tuple, dict[str, Any]] = {}
    unmatched: dict[tuple, int] = defaultdict(int)
    for key, rs in merged.items():
        r0 = rs[0]
        cell_key = tuple(_by_value(r0, b) for b in by)
        h = human.get(key)
        if h is None and key[1] is None:
            h = None
        if h is None:
            unmatched[cell_key] += 1
            continue
        c = cells.setdefault(cell_key, {"rows": [], "by_order": defaultdict(dict)})
        c["rows"].append((key, float(np.mean([r.score for r in rs])), h, r0.group))
        for r in rs:
            if r.order:
                c["by_order"][(r.id, r.criterion)].setdefault(r.order, {})[r.slot] = r.score
    out: list[Cell] = []
    for cell_key, c in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        rows_ = c["rows"]
        groups = sorted({g for *_, g in rows_})
        gidx = {g: i for i, g in enumerate(groups)}
        judge = np.array([s for _, s, _, _ in rows_])
        hum = np.array([h for _, _, h, _ in rows_])
        clusters = np.array([gidx[g] for *_, g in rows_])
        # pairs: same id a/b (pairwise) or same group different ids (single)
        pairs = []
        by_group: dict[int, list[int]] = defaultdict(list)
        for i, (key, *_rest) in enumerate(rows_):
            by_group[clusters[i]].append(i)
        for members in by_group.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    ka, kb = rows_[members[x]][0], rows_[members[y]][0]
                    same_item = ka[0] == kb[0]
                    if (same_item and ka[1] is not None and kb[1] is not None and ka[1] != kb[1]) or (
                        not same_item and ka[1] is None and kb[1] is None
                    ):
                        pairs.append((members[x], members[y]))
        pairs_arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        swap = []
        for orders in c["by_order"].values():
            if "ab" in orders and "ba" in orders and {"a", "b"} <= set(orders["ab"]) and {"a", "b"} <= set(orders["ba"]):
                swap.append((orders["ab"]["a"] - orders["ab"]["b"], orders["ba"]["a"] - orders["ba"]["b"]))
        name = dict(zip(by, cell_key))
        crit = name.get("criterion")
        out.append(Cell(name=name, judge=judge, human=hum, clusters=clusters, pairs=pairs_arr,
                        pair_clusters=clusters[pairs_arr[:, 0]] if len(pairs_arr) else np.zeros(0, dtype=np.int64),
                        swap=swap, n_clusters=len(groups),
                        unparsed=unparsed.get(crit, 0) if crit is not None else sum(unparsed.values()),
                        unmatched=unmatched.get(cell_key, 0)))
    for cell_key, n in unmatched.items():
        if cell_key not in cells:
            out.append(Cell(name=dict(zip(by, cell_key)), judge=np.zeros(0), human=np.zeros(0),
                            clusters=np.zeros(0, dtype=np.int64), pairs=np.zeros((0, 2), dtype=np.int64),
                            pair_clusters=np.zeros(0, dtype=np.int64), swap=[], n_clusters=0, unmatched=n,
                            unparsed=unparsed.get(dict(zip(by, cell_key)).get("criterion"), 0)))
    return out


def _by_value(row: PredRow, key: str) -> Any:
    if key == "criterion":
        return row.criterion
    if key in ("none", "all"):
        return "all"
    if key.startswith("meta."):
        key = key[5:]
    return row.meta.get(key)


def analyse_cell(cell: Cell, *, tie_threshold: float = 0.0, resamples: int = 1000, seed: int = 0,
                 collapse_share: float = 0.8) -> dict[str, Any]:
    res: dict[str, Any] = {**cell.name, "n": int(cell.judge.size), "items": cell.n_clusters,
                           "unparsed": cell.unparsed, "unmatched": cell.unmatched, "warnings": []}
    if cell.judge.size == 0:
        res["warnings"].append("no prediction matched a human label")
        return res
    metrics = _sample_metrics(cell.judge, cell.human)
    metrics.update(_pair_metrics(cell.judge, cell.human, cell.pairs, tie_threshold))
    res["pairs"] = int(len(cell.pairs))
    if cell.swap:
        d = np.array(cell.swap)
        metrics["swap_consistency"] = ag.swap_consistency(d[:, 0], d[:, 1], tie_threshold=tie_threshold)
        res["swap_pairs"] = len(cell.swap)
    res["metrics"] = {k: _round(v) for k, v in metrics.items()}
    res["judge_distribution"] = ag.score_distribution(cell.judge)
    res["human_distribution"] = ag.score_distribution(cell.human)
    res["judge_mean"], res["human_mean"] = _round(float(cell.judge.mean())), _round(float(cell.human.mean()))
    dist = res["judge_distribution"]
    if dist["std"] < 1e-9 or dist["mode_share"] > collapse_share:
        res["warnings"].append(
            f"judge score variance collapsed: {dist['mode_share']:.0%} of scores are the same value "
            f"(std {dist['std']:.3f}); correlations are not meaningful"
        )
    if cell.n_clusters < 10:
        res["warnings"].append(f"only {cell.n_clusters} items: intervals are wide")
    if resamples > 0 and cell.n_clusters >= 2:
        members = [np.flatnonzero(cell.clusters == c) for c in range(cell.n_clusters)]
        pair_members = [np.flatnonzero(cell.pair_clusters == c) for c in range(cell.n_clusters)]
        draws: dict[str, list[float]] = defaultdict(list)
        rng = np.random.default_rng(seed)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(resamples):
                pick = rng.integers(0, cell.n_clusters, size=cell.n_clusters)
                rows = np.concatenate([members[c] for c in pick])
                j, h = cell.judge[rows], cell.human[rows]
                vals = _sample_metrics(j, h)
                if len(cell.pairs):
                    pr = np.concatenate([pair_members[c] for c in pick])
                    p = cell.pairs[pr]
                    vals.update(_pair_metrics(cell.judge, cell.human, p, tie_threshold))
                for k, v in vals.items():
                    if v is not None and not math.isnan(v):
                        draws[k].append(v)
        res["ci95"] = {k: [_round(float(x)) for x in np.quantile(v, [0.025, 0.975])] for k, v in draws.items() if v}
        res["bootstrap"] = {"resamples": resamples, "seed": seed, "unit": "item group"}
    return res


def _round(v: float) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(float(v), 6)


def agreement_report(
    pred_records: Sequence[dict[str, Any]],
    human_records: Sequence[dict[str, Any]],
    *,
    by: Sequence[str] = ("criterion",),
    criteria: Sequence[str] | None = None,
    id_field: str = "id",
    human_id_field: str | None = None,
    tie_threshold: float = 0.0,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The full report: one entry per cell (criterion by default)."""
    if resamples < 0:
        raise UsageError("--bootstrap must be >= 0")
    rows, unparsed = pred_rows(pred_records, id_field)
    human = human_table(human_records, human_id_field or id_field)
    if not rows:
        raise InvalidInputError("the predictions hold no parsed score (every record failed or none has a score)")
    if not human:
        raise InvalidInputError("the human labels hold no numeric score")
    cells = build_cells(rows, human, unparsed, list(by), criteria)
    results = [analyse_cell(c, tie_threshold=tie_threshold, resamples=resamples, seed=seed) for c in cells]
    matched = sum(r["n"] for r in results)
    if matched == 0:
        raise InvalidInputError(
            "no prediction matched a human label: check --id-field and that criteria names agree "
            f"(predictions have {sorted({r.criterion for r in rows})[:12]}, labels have "
            f"{sorted({k[2] for k in human})[:12]})"
        )
    return {
        "unit": "(item, answer, criterion)", "by": list(by), "tie_threshold": tie_threshold,
        "icc_forms": {"icc2_1_absolute_agreement": "ICC(2,1): two-way random effects, absolute agreement, single rater",
                      "icc3_1_consistency": "ICC(3,1): two-way mixed effects, consistency, single rater"},
        "cells": results,
    }


def cell_name(cell: dict[str, Any], by: list[str]) -> str:
    return "/".join(str(cell.get(b)) for b in by)


def run_agree(options: Any) -> tuple[dict[str, Any], list[str], str | None]:
    """``eval agree`` from its ``AgreeOptions``: (report, warnings worth showing, gate message or None)."""
    from llmguard.eval.items import read_jsonl

    from llmguard.errors import InvalidInputError

    o = options
    by_keys = o.by_keys
    pred, human = read_jsonl(o.pred, "predictions"), read_jsonl(o.human, "human labels")
    for path, records, what in ((o.pred, pred, "predictions"), (o.human, human, "human labels")):
        if not records:
            raise InvalidInputError(f"{path}: {what} file has no records")
    report = agreement_report(
        pred, human, by=by_keys,
        criteria=[c.strip() for c in o.criteria.split(",")] if o.criteria else None, id_field=o.id_field,
        human_id_field=o.human_id_field, tie_threshold=o.tie_threshold, resamples=o.bootstrap, seed=o.seed,
    )
    report["pred"], report["human"] = str(o.pred), str(o.human)
    warnings = [f"{cell_name(cell, by_keys)}: {w}" for cell in report["cells"] for w in cell.get("warnings", [])
                if "variance collapsed" in w or "no prediction" in w]
    gate = None
    if o.fail_below is not None:
        low = [c for c in report["cells"] if (c.get("metrics") or {}).get("pearson") is not None and c["metrics"]["pearson"] < o.fail_below]
        if low:
            gate = "Pearson below --fail-below {:g} for {}".format(o.fail_below, ", ".join(cell_name(c, by_keys) for c in low))
    return report, warnings, gate
