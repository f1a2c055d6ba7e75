"""``eval safety``: harmful rate and refusal rate on harmful prompts, plus exact-match task accuracy.

The model answers every prompt (batched greedy generation, chat template when the tokenizer has
one); a judge (:mod:`llmguard.eval.safety_judges`) labels each answer ``harmful``, ``refusal`` or
``other``. Rates are per category and overall, always with their counts. Task accuracy (the
testbed tasks ``sst2`` and ``arith``, or any exact-match JSONL with an answer field) compares the
normalised first line of the answer with the reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import GateTripped, UsageError
from llmguard.eval.safety_options import TASKS, EvalSafetyOptions  # noqa: F401 - TASKS re-exported
from llmguard.io.records import read_records  # noqa: F401 - the one records reader, re-exported here
from llmguard.progress import NullProgress, Progress


def normalize_answer(text: str) -> str:
    """Lower-case first non-empty line, whitespace collapsed, surrounding punctuation dropped."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    first = " ".join(first.lower().split())
    return first.strip(" .,!?;:'\"")

def task_correct(response: str, answer: str) -> bool:
    """Exact match after :func:`normalize_answer`."""
    return normalize_answer(response) == normalize_answer(str(answer))

def _rate(k: int, n: int) -> float | None:
    return (k / n) if n else None

@dataclass
class SafetyReport:
    """Everything ``eval safety`` measured (``to_dict`` is the ``--json`` document)."""

    model: str
    adapter: str | None
    judge: str
    n: int
    harmful: int
    refusals: int
    other: int
    unparsed: int
    per_category: dict[str, dict[str, Any]]
    task: dict[str, Any] | None = None
    records: list[dict] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def harmful_rate(self) -> float | None:
        return _rate(self.harmful, self.n)

    @property
    def refusal_rate(self) -> float | None:
        return _rate(self.refusals, self.n)

    def to_dict(self, with_records: bool = True) -> dict[str, Any]:
        d = {
            "model": self.model,
            "adapter": self.adapter,
            "judge": self.judge,
            "n": self.n,
            "harmful": self.harmful,
            "refusals": self.refusals,
            "other": self.other,
            "unparsed": self.unparsed,
            "harmful_rate": self.harmful_rate,
            "refusal_rate": self.refusal_rate,
            "per_category": self.per_category,
            "task": self.task,
            "parameters": self.parameters,
            "timings_s": self.timings,
        }
        if with_records:
            d["records"] = self.records
        return d

def _inputs(options: EvalSafetyOptions) -> tuple[list[dict], list[dict]]:
    """The prompt records and task items: in-memory ones as given, files read (one reader)."""
    o = options
    prompts = o.prompt_records if o.prompt_records is not None else (
        read_records(o.prompts, required=[o.prompt_field], what="prompts") if o.prompts else None)
    items = o.task_records if o.task_records is not None else (
        read_records(o.task_data, required=[o.prompt_field, o.answer_field], what="task data") if o.task_data else None)
    prompts, items = list(prompts or [])[: o.limit or None], list(items or [])[: o.limit or None]
    if not prompts and not items:
        raise UsageError("nothing to evaluate: give --prompts and/or --task-data")
    return prompts, items


def _judge(options: EvalSafetyOptions) -> Any:
    from llmguard.eval.safety_judges import make_judge

    o = options
    return make_judge(o.judge, device=o.device, batch_size=o.batch_size, trust_remote_code=o.trust_remote_code)


def evaluate_safety(options: EvalSafetyOptions, *, progress: Progress | None = None,
                    loaded: tuple[Any, Any] | None = None, on_warning: Any = None) -> SafetyReport:
    """Generate answers for the harmful prompts (and task items), judge them, count.

    Prompts and task items come from ``options`` (files, or in-memory records for library
    callers such as the NLSR search). ``loaded`` reuses an already loaded ``(model, tokenizer)``.
    """
    import time

    from llmguard.eval.safety_judges import is_offline
    from llmguard.inference import format_prompt, generate, load_causal_lm

    o = options
    progress = progress or NullProgress()
    prompts, task_items = _inputs(o)
    task = o.task_name
    timings: dict[str, float] = {}
    # an offline judge is built before the model loads, so a bad phrase list fails in a second
    offline_judge = _judge(o) if is_offline(o.judge) else None

    t0 = time.perf_counter()
    if loaded is not None:
        lm, tok = loaded
    else:
        lm, tok = load_causal_lm(o.model, adapter=o.adapter, device=o.device, dtype=o.dtype, load_in_4bit=o.load_in_4bit,
                                 load_in_8bit=o.load_in_8bit, trust_remote_code=o.trust_remote_code, on_warning=on_warning)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    harm_texts = [str(r[o.prompt_field]) for r in prompts]
    harm_out = generate(lm, tok, [format_prompt(tok, p, o.template) for p in harm_texts],
                        max_new_tokens=o.max_new_tokens, batch_size=o.batch_size, progress=progress) if prompts else []
    task_texts = [str(r[o.prompt_field]) for r in task_items]
    task_out = generate(lm, tok, [format_prompt(tok, p, o.template) for p in task_texts],
                        max_new_tokens=min(o.max_new_tokens, 16), batch_size=o.batch_size, progress=progress) if task_items else []
    timings["generate"] = time.perf_counter() - t0
    if loaded is None:
        del lm

    t0 = time.perf_counter()
    judge = offline_judge or _judge(o)
    verdicts = judge.judge(harm_texts, harm_out, progress=progress) if prompts else []
    timings["judge"] = time.perf_counter() - t0

    per_cat: dict[str, dict[str, Any]] = {}
    records: list[dict] = []
    counts = {"harmful": 0, "refusal": 0, "other": 0}
    unparsed = 0
    for rec, resp, v in zip(prompts, harm_out, verdicts):
        cat = str(rec.get(o.category_field) or "uncategorized")
        c = per_cat.setdefault(cat, {"n": 0, "harmful": 0, "refusals": 0, "other": 0})
        c["n"] += 1
        key = {"harmful": "harmful", "refusal": "refusals", "other": "other"}[v.label]
        c[key] += 1
        counts[v.label] += 1
        unparsed += v.parse_status != "ok"
        records.append({"id": rec.get("id"), "kind": "harmful", "category": cat, "prompt": rec[o.prompt_field],
                        "response": resp, "label": v.label, "reason": v.reason, "parse_status": v.parse_status,
                        **({"judge_raw": v.raw} if v.raw is not None else {})})
    for c in per_cat.values():
        c["harmful_rate"] = _rate(c["harmful"], c["n"])
        c["refusal_rate"] = _rate(c["refusals"], c["n"])

    task_report = None
    if task_items:
        correct = 0
        for rec, resp in zip(task_items, task_out):
            ok = task_correct(resp, rec[o.answer_field])
            correct += ok
            records.append({"id": rec.get("id"), "kind": "task", "task": task, "prompt": rec[o.prompt_field],
                            "response": resp, "answer": rec[o.answer_field], "correct": ok})
        task_report = {"name": task, "n": len(task_items), "correct": correct,
                       "accuracy": _rate(correct, len(task_items))}

    judge_info = {"judge_fingerprint": judge.fingerprint} if getattr(judge, "fingerprint", None) else {}
    return SafetyReport(
        model=os.fspath(o.model), adapter=os.fspath(o.adapter) if o.adapter else None, judge=getattr(judge, "name", o.judge),
        n=len(prompts), harmful=counts["harmful"], refusals=counts["refusal"], other=counts["other"],
        unparsed=unparsed, per_category=dict(sorted(per_cat.items())), task=task_report, records=records,
        parameters={"batch_size": o.batch_size, "max_new_tokens": o.max_new_tokens, "device": o.device, "dtype": o.dtype,
                    "template": o.template, "decoding": "greedy", **judge_info},
        timings={k: round(v, 3) for k, v in timings.items()},
    )


@dataclass
class SafetyRun:
    """``eval safety`` as run from its options: the report, the ``--json`` document, the gate."""

    report: SafetyReport
    document: dict[str, Any]
    gate: str | None = None

    def check_gate(self) -> None:
        if self.gate is not None:
            raise GateTripped(self.gate)


def run_safety(options: EvalSafetyOptions, progress: Progress | None = None, on_warning: Any = None) -> SafetyRun:
    """Evaluate, write ``--records`` (atomic), decide the gate.

    ``--records`` is checked before anything loads (never an input, its parent usable, not
    existing without ``--force``) and locked for the whole run, so a second run fails at once.
    """
    from contextlib import nullcontext

    from llmguard.io.output_safety import OutputLock, check_output

    o = options
    if o.records is not None:  # before any model loads: never an input, parent usable, not taken by another run
        inputs = [Path(str(p)) for p in (o.prompts, o.task_data, o.adapter, o.model, o.judge) if p is not None]
        check_output(o.records, inputs, force=o.force, kind="file")
    with OutputLock(o.records) if o.records is not None else nullcontext():
        return _run_safety_locked(o, progress, on_warning)


def _run_safety_locked(o: EvalSafetyOptions, progress: Progress | None, on_warning: Any) -> SafetyRun:
    import json

    from llmguard.io.atomic import atomic_open

    report = evaluate_safety(o, progress=progress, on_warning=on_warning)
    if o.records is not None:
        with atomic_open(o.records) as fh:
            for rec in report.records:
                fh.write(json.dumps(rec) + "\n")
    tripped = o.fail_above is not None and report.harmful_rate is not None and report.harmful_rate > o.fail_above
    from llmguard.provenance import environment

    doc = report.to_dict(with_records=False)
    doc["environment"] = environment()  # versions, revision, CPU, threads, devices: as every manifest
    doc["fail_above"] = o.fail_above
    doc["gate_tripped"] = bool(tripped)
    gate = None
    if tripped:
        rate = "-" if report.harmful_rate is None else f"{100 * report.harmful_rate:.1f}%"
        gate = f"harmful rate {rate} ({report.harmful}/{report.n}) is above --fail-above {o.fail_above:g}"
    return SafetyRun(report, doc, gate)
