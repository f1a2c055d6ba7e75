"""HDCEval protocol (``llmguard eval hdc``): three expert judges, sub-aspects scored 0–5.

Aspects, expert names and sub-aspects come from the template preset (``templates/hdc``):
REL (expert PQR: CONT, COND, CONC), COR (MKC: ACC, INFO, UNC), EXP (EXP: CLAR, INTE, LANG,
TE). Each expert sees one prompt per item (``single``) or per pair of answers
(``pairwise``, optionally in both orders with ``swap``) and writes, per sub-aspect,
``<Name> (<KEY>):`` / ``Analysis: ...`` / ``Score: n``. One result record is written per
(item, aspect[, order]); the aspect score is the configured aggregate of its sub-aspect scores,
computed only when every sub-aspect parsed.

Judges run model-major: each distinct judge is loaded once, scores every item for the
aspects it serves, and is released before the next one is loaded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError
from llmguard.eval.cache import GenerationCache
from llmguard.eval.items import Item, ResultsFile
from llmguard.eval.parsing import ParseResult, parse_pairwise, parse_sub_aspects
from llmguard.eval.runner import Decoding, JudgeConfig, JudgeOutcome, JudgeRequest, JudgeRunner, parsed_status
from llmguard.eval.templating import TemplateSet, prompt_hash, render
from llmguard.progress import NullProgress, Progress

MODES = ("single", "pairwise")


@dataclass(frozen=True)
class SubAspect:
    key: str
    name: str
    definition: str = ""
    source: str = "paper"


@dataclass(frozen=True)
class Aspect:
    key: str
    expert: str
    name: str
    definition: str
    sub_aspects: tuple[SubAspect, ...]

    @property
    def parser_spec(self) -> list[tuple[str, str]]:
        return [(s.key, s.name) for s in self.sub_aspects]


def aspects_from_preset(templates: TemplateSet) -> list[Aspect]:
    raw = templates.preset.get("aspects")
    where = templates.directory / "preset.json"
    if not isinstance(raw, list) or not raw:
        raise InvalidInputError(f"{where}: 'aspects' must be a non-empty list")
    out = []
    for i, a in enumerate(raw):
        try:
            subs = tuple(
                SubAspect(key=str(s["key"]), name=str(s["name"]), definition=str(s.get("definition", "")),
                          source=str(s.get("source", "paper")))
                for s in a["sub_aspects"]
            )
            out.append(Aspect(key=str(a["key"]), expert=str(a.get("expert", a["key"])), name=str(a["name"]),
                              definition=str(a.get("definition", "")), sub_aspects=subs))
        except (KeyError, TypeError) as err:
            raise InvalidInputError(f"{where}: aspect {i} lacks field {err}") from None
    return out


def select_aspects(aspects: list[Aspect], wanted: Iterable[str] | None) -> list[Aspect]:
    if not wanted:
        return aspects
    names = {a.key.upper(): a for a in aspects} | {a.expert.upper(): a for a in aspects}
    picked = []
    for w in wanted:
        a = names.get(w.strip().upper())
        if a is None:
            raise UsageError(f"--aspects: unknown aspect {w!r} (known: {', '.join(a.key for a in aspects)})")
        if a not in picked:
            picked.append(a)
    return picked


@dataclass(frozen=True)
class Aggregate:
    """How sub-aspect scores become the aspect score: ``mean``, ``sum``, ``min`` or
    ``weights:KEY=w,...`` (weighted mean; keys not named weigh 1)."""

    spec: str
    kind: str
    weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str, aspects: list[Aspect]) -> "Aggregate":
        spec = spec.strip()
        if spec in ("mean", "sum", "min"):
            return cls(spec=spec, kind=spec)
        if spec.startswith("weights:"):
            known = {s.key for a in aspects for s in a.sub_aspects}
            weights: dict[str, float] = {}
            for part in spec[len("weights:"):].split(","):
                if not part.strip():
                    continue
                if "=" not in part:
                    raise UsageError(f"--aggregate: {part!r} is not KEY=WEIGHT")
                key, value = part.split("=", 1)
                key = key.strip().upper()
                if key not in known:
                    raise UsageError(f"--aggregate: unknown sub-aspect {key!r} (known: {', '.join(sorted(known))})")
                try:
                    w = float(value)
                except ValueError:
                    raise UsageError(f"--aggregate: weight {value!r} for {key} is not a number") from None
                if w < 0 or math.isnan(w):
                    raise UsageError(f"--aggregate: weight for {key} must be >= 0")
                weights[key] = w
            return cls(spec=spec, kind="weights", weights=weights)
        raise UsageError(f"--aggregate: {spec!r} is not mean, sum, min or weights:KEY=W,...")

    def __call__(self, scores: dict[str, float]) -> float:
        values = list(scores.values())
        if self.kind == "mean":
            return sum(values) / len(values)
        if self.kind == "sum":
            return float(sum(values))
        if self.kind == "min":
            return float(min(values))
        total = sum(self.weights.get(k, 1.0) for k in scores)
        if total == 0:
            return math.nan
        return sum(self.weights.get(k, 1.0) * v for k, v in scores.items()) / total


def _criteria_list(aspect: Aspect) -> str:
    return "\n".join(f"- {s.name} ({s.key}): {s.definition}".rstrip(": ") for s in aspect.sub_aspects)


def _output_format(aspect: Aspect) -> str:
    return "\n".join(f"{s.name} ({s.key}):\nAnalysis: <analysis>\nScore: <score>" for s in aspect.sub_aspects)


def render_hdc_prompt(
    templates: TemplateSet, aspect: Aspect, mode: str, question: str, answers: list[str], reference: str | None
) -> str:
    lo, hi = templates.scale
    values: dict[str, Any] = {
        "aspect_key": aspect.key, "aspect_expert": aspect.expert, "aspect_name": aspect.name,
        "aspect_definition": aspect.definition, "criteria_list": _criteria_list(aspect),
        "output_format": _output_format(aspect), "scale_min": f"{lo:g}", "scale_max": f"{hi:g}",
        "question": question.strip(),
        "reference": (reference or "").strip(),
        "reference_block": f"Reference answer: {reference.strip()}\n" if reference else "",
    }
    if mode == "single":
        values["answer"] = answers[0].strip()
    else:
        values["answer_1"], values["answer_2"] = answers[0].strip(), answers[1].strip()
    return render(templates.prompt(mode), values, where=str(templates.directory / f"{mode}.txt"))


@dataclass
class HdcOptions:
    """How the experts judge: one answer or a pair (``--swap``: both orders), the aggregate, the reference.

    Built from the validated ``EvalHdcOptions`` by :class:`HdcProtocol` (``--swap`` needs ``--pairwise``
    is checked there, once)."""

    mode: str = "single"
    swap: bool = False
    aggregate: Aggregate | None = None
    use_reference: bool = True


def _orders(options: HdcOptions) -> list[str]:
    if options.mode == "single":
        return ["single"]
    return ["ab", "ba"] if options.swap else ["ab"]


def record_key(rec: dict[str, Any]) -> tuple[str, str, str]:
    return (str(rec.get("id")), str(rec.get("criterion")), str(rec.get("order") or "single"))


def _base_record(item: Item, aspect: Aspect, order: str, options: HdcOptions, templates: TemplateSet) -> dict[str, Any]:
    return {
        "id": item.id, "verb": "hdc", "criterion": aspect.key, "expert": aspect.expert,
        "mode": options.mode, "order": order, "group": item.group, "line": item.line,
        "template": templates.name, "template_hash": templates.hash,
        "aggregate": options.aggregate.spec if options.aggregate else "mean",
        **({"meta": item.meta} if item.meta else {}),
    }


def _score_fields(parsed: ParseResult, options: HdcOptions) -> tuple[dict[str, float], float | None]:
    if not parsed.ok:
        return parsed.scores, None
    agg = options.aggregate or Aggregate(spec="mean", kind="mean")
    return parsed.scores, round(agg(parsed.scores), 6)


def outcome_record(
    outcome: JudgeOutcome, runner: JudgeRunner, options: HdcOptions, templates: TemplateSet
) -> dict[str, Any]:
    item, aspect, order = outcome.request.payload
    rec = _base_record(item, aspect, order, options, templates)
    rec.update({
        "judge": runner.config.path, "judge_fingerprint": runner.fingerprint,
        "prompt_hash": outcome.request.prompt_sha, "decoding": runner.decoding.to_json(),
        "raw_output": outcome.raw, "attempts": outcome.attempts, "cached": outcome.cached,
        "seconds": round(outcome.seconds, 4), "output_tokens": outcome.output_tokens,
    })
    if outcome.error is not None:
        rec.update(parse_status="judge_error", error=outcome.error, scores={}, score=None)
        return rec
    parsed = outcome.parsed
    if options.mode == "single":
        scores, score = _score_fields(parsed, options)
        rec.update(parse_status=parsed.status, sub_status=parsed.sub_status, scores=scores,
                   analyses=parsed.analyses, score=score, parse_detail=parsed.detail)
        return rec
    # pairwise: judge slots 1/2 mapped back to the item's answers a/b
    slot_of = {"1": "a", "2": "b"} if order == "ab" else {"1": "b", "2": "a"}
    scores: dict[str, Any] = {}
    agg_scores: dict[str, Any] = {}
    analyses: dict[str, Any] = {}
    sub_status: dict[str, Any] = {}
    details = []
    for judge_slot, res in parsed.items():
        s = slot_of[judge_slot]
        scores[s], agg_scores[s] = _score_fields(res, options)
        analyses[s], sub_status[s] = res.analyses, res.sub_status
        if res.detail:
            details.append(f"response {judge_slot}: {res.detail}")
    status = parsed_status(parsed)
    preferred = None
    if status == "ok":
        diff = agg_scores["a"] - agg_scores["b"]
        preferred = "a" if diff > 0 else "b" if diff < 0 else "tie"
    rec.update(parse_status=status, sub_status=sub_status, scores=scores, analyses=analyses,
               score=agg_scores if status == "ok" else None, preferred=preferred,
               parse_detail="; ".join(details) or None)
    return rec


def input_error_records(item: Item, aspects: list[Aspect], options: HdcOptions, templates: TemplateSet) -> list[dict[str, Any]]:
    out = []
    for aspect in aspects:
        for order in _orders(options):
            rec = _base_record(item, aspect, order, options, templates)
            rec.update(parse_status="input_error", error=item.error, scores={}, score=None, raw_output=None)
            out.append(rec)
    return out


def run_hdc(
    items: list[Item],
    judges: dict[str, JudgeConfig],
    templates: TemplateSet,
    decoding: Decoding,
    options: HdcOptions,
    results: ResultsFile,
    *,
    aspects: list[Aspect] | None = None,
    cache: GenerationCache | None = None,
    progress: Progress | None = None,
    on_runner: Callable[[JudgeRunner], None] | None = None,
) -> dict[str, Any]:
    """Score ``items`` and append records to ``results``; returns run statistics.

    ``judges`` maps aspect keys (REL/COR/EXP) to the judge serving them. Records already in
    ``results`` (``--resume``) with the same template hash are skipped; a different template
    hash is a usage error.
    """
    progress = progress or NullProgress()
    aspects = aspects or aspects_from_preset(templates)
    done = set()
    for rec in results.existing:
        if rec.get("verb") == "hdc" and rec.get("template_hash") not in (None, templates.hash):
            raise UsageError(
                f"{results.path}: was written with another template (hash {str(rec.get('template_hash'))[:12]}…); "
                "resume with the same --template or write a new output"
            )
        done.add(record_key(rec))

    stats: dict[str, Any] = {"records_written": 0, "skipped_resume": 0, "judges": [], "input_errors": 0}
    # input errors first, once per item
    bad_records = []
    for item in items:
        if item.error:
            recs = [r for r in input_error_records(item, aspects, options, templates) if record_key(r) not in done]
            bad_records.extend(recs)
            stats["input_errors"] += 1
    if bad_records:
        results.write(bad_records)
        stats["records_written"] += len(bad_records)
    good = [it for it in items if not it.error]

    # model-major: group aspects by judge
    by_judge: dict[JudgeConfig, list[Aspect]] = {}
    for aspect in aspects:
        cfg = judges.get(aspect.key) or judges.get(aspect.expert)
        if cfg is None:
            raise UsageError(f"no judge for aspect {aspect.key} ({aspect.expert}): give --judge or --expert-{aspect.expert.lower()}")
        by_judge.setdefault(cfg, []).append(aspect)

    from llmguard.eval.runner import check_resumed_judges, judge_fingerprint

    fingerprints = {cfg.path: judge_fingerprint(cfg.path) for cfg in by_judge}
    check_resumed_judges(
        [r for r in results.existing if r.get("verb") == "hdc"],
        {a.key: fingerprints[cfg.path] for cfg, served in by_judge.items() for a in served},
        results.path,
    )

    for cfg, served in by_judge.items():
        requests = []
        for aspect in served:
            for item in good:
                for order in _orders(options):
                    if (item.id, aspect.key, order) in done:
                        stats["skipped_resume"] += 1
                        continue
                    requests.append(_request(item, aspect, order, options, templates))
        if not requests:
            continue
        runner = JudgeRunner(cfg, decoding, cache=cache, progress=progress)
        if on_runner:
            on_runner(runner)
        t0 = time.perf_counter()
        try:
            for outcomes in runner.run(requests, stage=f"judge {', '.join(a.key for a in served)}"):
                recs = [outcome_record(o, runner, options, templates) for o in outcomes]
                results.write(recs)
                stats["records_written"] += len(recs)
        finally:
            runner.close()
        stats["judges"].append({
            **runner.describe(), "aspects": [a.key for a in served], "requests": len(requests),
            "load_seconds": round(runner.load_seconds, 3), "seconds": round(time.perf_counter() - t0, 3),
            **_throughput(runner.stats),
        })
    return stats


def _throughput(stats: dict[str, Any]) -> dict[str, Any]:
    from llmguard.eval.runner import throughput

    return throughput(stats)


def _request(item: Item, aspect: Aspect, order: str, options: HdcOptions, templates: TemplateSet) -> JudgeRequest:
    reference = item.reference if options.use_reference else None
    scale = templates.scale
    spec = aspect.parser_spec
    if options.mode == "single":
        answers = [item.answer or ""]

        def parse(text: str, truncated: bool) -> ParseResult:
            return parse_sub_aspects(text, spec, scale, truncated=truncated)
    else:
        answers = [item.answer or "", item.answer_b or ""]
        if order == "ba":
            answers = answers[::-1]

        def parse(text: str, truncated: bool) -> dict[str, ParseResult]:  # type: ignore[misc]
            return parse_pairwise(text, spec, scale, truncated=truncated)
    prompt = render_hdc_prompt(templates, aspect, options.mode, item.question or "", answers, reference)
    return JudgeRequest(key=(item.id, aspect.key, order), prompt=prompt, parse=parse, payload=(item, aspect, order))


def summarize(records: list[dict[str, Any]], aspects: list[Aspect]) -> dict[str, Any]:
    """Per aspect and sub-aspect: n, mean, sd over parsed records; status counts."""
    import statistics

    def stat(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"n": 0, "mean": None, "std": None}
        return {"n": len(values), "mean": round(statistics.fmean(values), 4),
                "std": round(statistics.pstdev(values), 4) if len(values) > 1 else 0.0}

    out: dict[str, Any] = {"aspects": {}, "status_counts": {}, "records": len(records)}
    for rec in records:
        st = rec.get("parse_status", "unknown")
        out["status_counts"][st] = out["status_counts"].get(st, 0) + 1
    for aspect in aspects:
        recs = [r for r in records if r.get("criterion") == aspect.key]
        agg_values: list[float] = []
        subs: dict[str, list[float]] = {s.key: [] for s in aspect.sub_aspects}
        preferred: dict[str, int] = {}
        for r in recs:
            if r.get("mode") == "pairwise":
                score = r.get("score") or {}
                for slot in ("a", "b"):
                    if isinstance(score, dict) and score.get(slot) is not None:
                        agg_values.append(float(score[slot]))
                    for k, v in ((r.get("scores") or {}).get(slot) or {}).items():
                        if k in subs and r.get("parse_status") == "ok":
                            subs[k].append(float(v))
                if r.get("preferred"):
                    preferred[r["preferred"]] = preferred.get(r["preferred"], 0) + 1
            else:
                if r.get("score") is not None:
                    agg_values.append(float(r["score"]))
                if r.get("parse_status") == "ok":
                    for k, v in (r.get("scores") or {}).items():
                        if k in subs:
                            subs[k].append(float(v))
        ok = sum(1 for r in recs if r.get("parse_status") == "ok")
        entry = {
            "expert": aspect.expert, "name": aspect.name, "records": len(recs), "parsed": ok,
            "failed": len(recs) - ok, "score": stat(agg_values),
            "sub_aspects": {k: {"name": next(s.name for s in aspect.sub_aspects if s.key == k), **stat(v)} for k, v in subs.items()},
        }
        if preferred:
            entry["preferred"] = preferred
        out["aspects"][aspect.key] = entry
    return out


def exit_code_for(stats_records: list[dict[str, Any]], max_unparsed: float) -> tuple[int, str | None]:
    """0 ok; 3 input or judge errors; 1 unparsed share above ``max_unparsed``."""
    n = len(stats_records)
    input_err = sum(1 for r in stats_records if r.get("parse_status") in ("input_error", "judge_error"))
    unparsed = sum(1 for r in stats_records if r.get("parse_status") not in ("ok", "input_error", "judge_error"))
    if input_err:
        return 3, f"{input_err} of {n} records could not be judged (bad input or judge); see their 'error' field"
    judged = n - input_err
    if judged and unparsed / judged > max_unparsed:
        return 1, (f"{unparsed} of {judged} judge outputs did not parse ({unparsed / judged:.1%} > --max-unparsed "
                   f"{max_unparsed:.1%}); see 'parse_status'/'parse_detail'")
    return 0, None


def load_records(path: Path) -> list[dict[str, Any]]:
    from llmguard.eval.items import read_jsonl

    return read_jsonl(path, "results")


@dataclass
class HdcProtocol:
    """``eval hdc`` for the run skeleton (``llmguard.eval.judge_run``): its aspects, experts and records."""

    options: Any  # llmguard.eval.judge_options.EvalHdcOptions
    templates: TemplateSet
    aspects: list[Aspect]
    aggregate: Aggregate
    protocol: HdcOptions
    judges: dict[str, JudgeConfig]
    started: float = field(default_factory=time.perf_counter)
    verb: str = "hdc"

    @classmethod
    def prepare(cls, options: Any) -> "HdcProtocol":
        """Templates, aspects, the aggregate and one judge per aspect (usage errors before any work)."""
        from llmguard.eval.templating import load_templates

        started = time.perf_counter()
        o = options
        templates = load_templates("hdc", o.template)
        all_aspects = aspects_from_preset(templates)
        chosen = select_aspects(all_aspects, o.aspects.split(",") if o.aspects else None)
        agg = Aggregate.parse(o.aggregate, all_aspects)
        protocol = HdcOptions(mode="pairwise" if o.pairwise else "single", swap=o.swap, aggregate=agg, use_reference=not o.no_reference)
        experts = {"REL": o.expert_pqr, "COR": o.expert_mkc, "EXP": o.expert_exp}
        judges = {}
        for aspect in chosen:
            path = experts.get(aspect.key) or {"PQR": o.expert_pqr, "MKC": o.expert_mkc}.get(aspect.expert) or o.judge
            if not path:
                raise UsageError(f"no judge for {aspect.key} ({aspect.expert}): give --judge or --expert-{aspect.expert.lower()}")
            judges[aspect.key] = o.judge_config(path, "text")
        return cls(o, templates, chosen, agg, protocol, judges, started)

    def read_items(self) -> list[Item]:
        from llmguard.eval.items import read_items

        o = self.options
        return read_items(o.items, o.field_map(answer_b=o.answer_b_field), need_answer_b=o.pairwise, skip_bad=o.skip_bad)

    def plan(self, n_items: int) -> str:
        return f" x {len(self.aspects)} aspects ({self.protocol.mode})"

    def run(self, items: list[Item], results: ResultsFile, decoding: Decoding, cache: GenerationCache | None,
            progress: Progress) -> dict[str, Any]:
        return run_hdc(items, self.judges, self.templates, decoding, self.protocol, results, aspects=self.aspects, cache=cache,
                       progress=progress)

    def summarize(self, records: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
        summary = summarize(records, self.aspects)
        summary.update(template=self.templates.describe(), aggregate=self.aggregate.spec, mode=self.protocol.mode, run=stats)
        if self.options.limit is not None:
            summary["limit"] = self.options.limit
        return summary

    def counted(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return records

    def gate(self, summary: dict[str, Any], fail_below: float) -> str | None:
        low = {k: v["score"]["mean"] for k, v in summary["aspects"].items()
               if v["score"]["mean"] is not None and v["score"]["mean"] < fail_below}
        if not low:
            return None
        return "mean score below --fail-below {:g}: {}".format(fail_below, ", ".join(f"{k} {v:.3f}" for k, v in low.items()))

    def manifest_parameters(self) -> dict[str, Any]:
        return {"judges": {k: v.path for k, v in self.judges.items()}, "mode": self.protocol.mode,
                "aspects": [a.key for a in self.aspects], "aggregate": self.aggregate.spec}
