"""ACE-M3 protocol (``llmguard eval ace-m3``): branch judges, then a merge ("Conclusion") judge.

For each item (image, question, candidate answer [, reference]) every branch judge writes a
criterion analysis (``Analysis: ...`` / ``Score: n``, template ``branch.txt``); the
Conclusion judge then reads the question, the image, the answer and all branch analyses
(``conclusion.txt``) and writes ``Final Score: n``. Branch outputs are kept as their own
records (``stage: "branch"``), the final score as a ``stage: "conclusion"`` record that names
the branch records it was built from (their prompt hashes).

``merge`` other than ``model`` replaces the Conclusion judge by a formula over the branch
scores (``mean``, ``min``, ``weighted:REL=1,COR=2,EXP=1``): a cheap mode and an ablation. The
paper's prompts, criteria and scale are unknown, so the shipped preset is ``experimental``
(see ``templates/ace-m3/preset.json``); ``--template`` and ``--scale`` override everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError
from llmguard.eval.cache import GenerationCache
from llmguard.eval.items import Item, ResultsFile
from llmguard.eval.parsing import ParseResult, parse_marked_score
from llmguard.eval.runner import Decoding, JudgeConfig, JudgeOutcome, JudgeRequest, JudgeRunner, throughput
from llmguard.eval.templating import TemplateSet, render
from llmguard.progress import NullProgress, Progress


@dataclass(frozen=True)
class Branch:
    key: str
    expert: str
    name: str
    definition: str


def branches_from_preset(templates: TemplateSet) -> list[Branch]:
    raw = templates.preset.get("branches")
    where = templates.directory / "preset.json"
    if not isinstance(raw, list) or not raw:
        raise InvalidInputError(f"{where}: 'branches' must be a non-empty list")
    try:
        return [Branch(key=str(b["key"]), expert=str(b.get("expert", b["key"])), name=str(b["name"]),
                       definition=str(b.get("definition", ""))) for b in raw]
    except (KeyError, TypeError) as err:
        raise InvalidInputError(f"{where}: a branch lacks field {err}") from None


@dataclass(frozen=True)
class Merge:
    spec: str
    kind: str
    weights: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, spec: str, branches: list[Branch]) -> "Merge":
        if spec in ("model", "mean", "min"):
            return cls(spec=spec, kind=spec)
        if spec.startswith("weighted:"):
            known = {b.key for b in branches}
            weights = []
            for part in spec.split(":", 1)[1].split(","):
                if not part.strip():
                    continue
                key, _, value = part.partition("=")
                key = key.strip().upper()
                if key not in known:
                    raise UsageError(f"--merge: unknown branch {key!r} (known: {', '.join(sorted(known))})")
                try:
                    weights.append((key, float(value)))
                except ValueError:
                    raise UsageError(f"--merge: weight {value!r} for {key} is not a number") from None
            return cls(spec=spec, kind="weighted", weights=tuple(weights))
        raise UsageError(f"--merge: {spec!r} is not model, mean, min or weighted:KEY=W,...")

    def combine(self, scores: dict[str, float]) -> float:
        if self.kind == "mean":
            return sum(scores.values()) / len(scores)
        if self.kind == "min":
            return min(scores.values())
        w = dict(self.weights)
        total = sum(w.get(k, 1.0) for k in scores)
        return sum(w.get(k, 1.0) * v for k, v in scores.items()) / total


@dataclass
class AceOptions:
    merge: Merge
    scale: tuple[float, float]
    use_reference: bool = True
    branch_marker: str = "Score"
    conclusion_marker: str = "Final Score"


def _values(templates: TemplateSet, item: Item, options: AceOptions) -> dict[str, Any]:
    lo, hi = options.scale
    ref = item.reference if options.use_reference else None
    return {
        "question": (item.question or "").strip(), "answer": (item.answer or "").strip(),
        "reference": (ref or "").strip(), "reference_block": f"Reference answer: {ref.strip()}\n" if ref else "",
        "scale_min": f"{lo:g}", "scale_max": f"{hi:g}",
    }


def render_branch(templates: TemplateSet, branch: Branch, item: Item, options: AceOptions) -> str:
    values = _values(templates, item, options) | {
        "criterion_key": branch.key, "criterion_expert": branch.expert, "criterion_name": branch.name,
        "criterion_definition": branch.definition,
    }
    return render(templates.prompt("branch"), values, where=str(templates.directory / "branch.txt"))


def render_conclusion(templates: TemplateSet, branches: list[Branch], analyses: dict[str, str], item: Item,
                      options: AceOptions) -> str:
    block = "\n\n".join(f"{b.name} ({b.key}) analysis:\n{analyses[b.key].strip()}" for b in branches)
    values = _values(templates, item, options) | {"branch_analyses": block}
    return render(templates.prompt("conclusion"), values, where=str(templates.directory / "conclusion.txt"))


def _record(item: Item, stage: str, criterion: str, templates: TemplateSet, options: AceOptions) -> dict[str, Any]:
    return {"id": item.id, "verb": "ace-m3", "stage": stage, "criterion": criterion, "group": item.group,
            "line": item.line, "image": item.image, "template": templates.name, "template_hash": templates.hash,
            "experimental": templates.experimental, "merge": options.merge.spec,
            "scale": list(options.scale), **({"meta": item.meta} if item.meta else {})}


def _outcome_record(o: JudgeOutcome, runner: JudgeRunner, stage: str, criterion: str, templates: TemplateSet,
                    options: AceOptions) -> dict[str, Any]:
    item = o.request.payload[0]
    rec = _record(item, stage, criterion, templates, options)
    rec.update({"judge": runner.config.path, "judge_fingerprint": runner.fingerprint,
                "prompt_hash": o.request.prompt_sha, "image_hash": o.request.image_hash,
                "decoding": runner.decoding.to_json(), "raw_output": o.raw, "attempts": o.attempts,
                "cached": o.cached, "seconds": round(o.seconds, 4), "output_tokens": o.output_tokens})
    if o.error is not None:
        rec.update(parse_status="judge_error", error=o.error, score=None, analysis=None)
        return rec
    p: ParseResult = o.parsed
    rec.update(parse_status=p.status, score=p.scores.get("score"), analysis=p.analyses.get("score"),
               parse_detail=p.detail)
    return rec


def record_key(rec: dict[str, Any]) -> tuple[str, str, str]:
    return (str(rec.get("id")), str(rec.get("stage")), str(rec.get("criterion")))


def run_ace_m3(
    items: list[Item],
    branch_judges: dict[str, JudgeConfig],
    conclusion_judge: JudgeConfig | None,
    templates: TemplateSet,
    decoding: Decoding,
    options: AceOptions,
    results: ResultsFile,
    *,
    base_dir: Path,
    cache: GenerationCache | None = None,
    progress: Progress | None = None,
    on_runner: Callable[[JudgeRunner], None] | None = None,
) -> dict[str, Any]:
    """Run branches (model-major), then the merge; append records; return run statistics."""
    from llmguard.eval.image_text import ImageError, load_image

    progress = progress or NullProgress()
    branches = branches_from_preset(templates)
    if options.merge.kind == "model" and conclusion_judge is None:
        raise UsageError("--merge model needs a Conclusion judge: give --conclusion or --judge")
    existing: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in results.existing:
        if rec.get("verb") == "ace-m3" and rec.get("template_hash") not in (None, templates.hash):
            raise UsageError(f"{results.path}: was written with another template; resume with the same --template")
        existing[record_key(rec)] = rec
    stats: dict[str, Any] = {"records_written": 0, "skipped_resume": 0, "input_errors": 0, "judges": []}

    # load and hash images once; per-item input errors become records
    images: dict[str, tuple[Any, str]] = {}
    good: list[Item] = []
    bad_records: list[dict[str, Any]] = []
    for item in items:
        error = item.error
        if error is None:
            try:
                images[item.id] = load_image(item.image or "", base_dir)
            except ImageError as err:
                error = f"line {item.line}: item {item.id!r}: {err}"
        if error is not None:
            stats["input_errors"] += 1
            for stage, crit in [("branch", b.key) for b in branches] + [("conclusion", "overall")]:
                if (item.id, stage, crit) in existing:
                    continue
                rec = _record(item, stage, crit, templates, options)
                rec.update(parse_status="input_error", error=error, score=None, raw_output=None)
                bad_records.append(rec)
            continue
        good.append(item)
    if bad_records:
        results.write(bad_records)
        stats["records_written"] += len(bad_records)

    branch_records: dict[tuple[str, str], dict[str, Any]] = {
        (k[0], k[2]): r for k, r in existing.items() if k[1] == "branch"
    }

    def run_judge(cfg: JudgeConfig, requests: list[JudgeRequest], stage: str, label: str) -> None:
        if not requests:
            return
        runner = JudgeRunner(cfg, decoding, cache=cache, progress=progress)
        if on_runner:
            on_runner(runner)
        t0 = time.perf_counter()
        try:
            for outcomes in runner.run(requests, stage=label):
                recs = []
                for o in outcomes:
                    crit = o.request.payload[1]
                    rec = _outcome_record(o, runner, stage, crit, templates, options)
                    recs.append(rec)
                    if stage == "branch":
                        branch_records[(rec["id"], crit)] = rec
                results.write(recs)
                stats["records_written"] += len(recs)
        finally:
            runner.close()
        stats["judges"].append({**runner.describe(), "stage": label, "requests": len(requests),
                                "load_seconds": round(runner.load_seconds, 3),
                                "seconds": round(time.perf_counter() - t0, 3), **throughput(runner.stats)})

    scale = options.scale

    def branch_parse(text: str, truncated: bool) -> ParseResult:
        return parse_marked_score(text, options.branch_marker, scale, truncated=truncated)

    def conclusion_parse(text: str, truncated: bool) -> ParseResult:
        return parse_marked_score(text, options.conclusion_marker, scale, truncated=truncated)

    # branches, model-major
    by_judge: dict[JudgeConfig, list[Branch]] = {}
    for b in branches:
        cfg = branch_judges.get(b.key) or branch_judges.get(b.expert)
        if cfg is None:
            raise UsageError(f"no judge for branch {b.key}: give --judge or --branch {b.key}=PATH")
        by_judge.setdefault(cfg, []).append(b)
    from llmguard.eval.runner import check_resumed_judges, judge_fingerprint

    expected = {b.key: judge_fingerprint(cfg.path) for cfg, served in by_judge.items() for b in served}
    if conclusion_judge is not None:
        expected["overall"] = judge_fingerprint(conclusion_judge.path)
    check_resumed_judges([r for r in results.existing if r.get("verb") == "ace-m3"], expected, results.path)
    for cfg, served in by_judge.items():
        reqs = []
        for b in served:
            for item in good:
                if (item.id, "branch", b.key) in existing:
                    stats["skipped_resume"] += 1
                    continue
                image, image_hash = images[item.id]
                reqs.append(JudgeRequest(key=(item.id, b.key), prompt=render_branch(templates, b, item, options),
                                         parse=branch_parse, image=image, image_hash=image_hash, payload=(item, b.key)))
        run_judge(cfg, reqs, "branch", f"branch {', '.join(b.key for b in served)}")

    # merge
    merge_reqs = []
    formula_records = []
    for item in good:
        if (item.id, "conclusion", "overall") in existing:
            stats["skipped_resume"] += 1
            continue
        recs = {b.key: branch_records.get((item.id, b.key)) for b in branches}
        failed = [k for k, r in recs.items() if r is None or r.get("parse_status") in ("judge_error", "input_error", "empty")
                  or (options.merge.kind != "model" and r.get("score") is None)]
        hashes = {k: (r or {}).get("prompt_hash") for k, r in recs.items()}
        if failed:
            rec = _record(item, "conclusion", "overall", templates, options)
            rec.update(parse_status="upstream_failed", score=None, branch_prompt_hashes=hashes,
                       error=f"branch output unusable for {', '.join(failed)}")
            formula_records.append(rec)
            continue
        if options.merge.kind != "model":
            rec = _record(item, "conclusion", "overall", templates, options)
            scores = {k: float(r["score"]) for k, r in recs.items()}
            rec.update(parse_status="ok", score=round(options.merge.combine(scores), 6), branch_scores=scores,
                       branch_prompt_hashes=hashes)
            formula_records.append(rec)
            continue
        image, image_hash = images[item.id]
        analyses = {k: (r.get("raw_output") or "") for k, r in recs.items()}
        merge_reqs.append(JudgeRequest(key=(item.id, "overall"),
                                       prompt=render_conclusion(templates, branches, analyses, item, options),
                                       parse=conclusion_parse, image=image, image_hash=image_hash,
                                       payload=(item, "overall", hashes)))
    if formula_records:
        results.write(formula_records)
        stats["records_written"] += len(formula_records)
    if merge_reqs and conclusion_judge is not None:
        run_judge(conclusion_judge, merge_reqs, "conclusion", "conclusion")
    return stats


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    out: dict[str, Any] = {"records": len(records), "status_counts": {}, "criteria": {}}
    for r in records:
        key = f"{r.get('stage')}:{r.get('parse_status')}"
        out["status_counts"][key] = out["status_counts"].get(key, 0) + 1
    crits: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        crits.setdefault(f"{r.get('stage')}:{r.get('criterion')}", []).append(r)
    for name, recs in crits.items():
        vals = [float(r["score"]) for r in recs if r.get("score") is not None and r.get("parse_status") == "ok"]
        out["criteria"][name] = {
            "records": len(recs), "parsed": len(vals),
            "mean": round(statistics.fmean(vals), 4) if vals else None,
            "std": round(statistics.pstdev(vals), 4) if len(vals) > 1 else None,
        }
    return out


@dataclass
class AceM3Protocol:
    """``eval ace-m3`` for the run skeleton (``llmguard.eval.judge_run``): branches, the merge, records."""

    options: Any  # llmguard.eval.judge_options.EvalAceM3Options
    templates: TemplateSet
    branches: list[Branch]
    merge: Merge
    protocol: AceOptions
    branch_judges: dict[str, JudgeConfig]
    conclusion_judge: JudgeConfig | None
    modality: str
    started: float = 0.0
    verb: str = "ace-m3"

    @classmethod
    def prepare(cls, options: Any) -> "AceM3Protocol":
        """Templates, branches, the merge and the judges (usage errors before any work)."""
        from llmguard.eval.templating import load_templates

        started = time.perf_counter()
        o = options
        templates = load_templates("ace-m3", o.template)
        branches = branches_from_preset(templates)
        merge = Merge.parse(o.merge, branches)
        scale = o.scale_range(templates.scale)
        protocol = AceOptions(merge=merge, scale=scale, use_reference=not o.no_reference,
                              branch_marker=str(templates.preset.get("branch_score_marker", "Score")),
                              conclusion_marker=str(templates.preset.get("conclusion_score_marker", "Final Score")))
        modality = "text" if o.text_only else "image-text"
        explicit: dict[str, str] = {}
        known = {b.key for b in branches} | {b.expert for b in branches}
        for spec in o.branch:
            key, sep, path = spec.partition("=")
            if not sep or not path:
                raise UsageError(f"--branch: {spec!r} is not KEY=PATH")
            if key.strip().upper() not in known:
                raise UsageError(f"--branch: unknown branch {key!r} (known: {', '.join(sorted(known))})")
            explicit[key.strip().upper()] = path
        branch_judges = {}
        for b in branches:
            path = explicit.get(b.key) or explicit.get(b.expert) or o.judge
            if not path:
                raise UsageError(f"no judge for branch {b.key}: give --judge or --branch {b.key}=PATH")
            branch_judges[b.key] = o.judge_config(path, modality)
        conclusion_path = o.conclusion or o.judge
        conclusion = o.judge_config(conclusion_path, modality) if (conclusion_path and merge.kind == "model") else None
        if merge.kind == "model" and conclusion is None:
            raise UsageError("--merge model needs a Conclusion judge: give --conclusion or --judge (or --merge mean)")
        return cls(o, templates, branches, merge, protocol, branch_judges, conclusion, modality, started)

    def read_items(self) -> list[Item]:
        from llmguard.eval.items import read_items

        o = self.options
        return read_items(o.items, o.field_map(image=o.image_field), need_image=True, skip_bad=o.skip_bad)

    def plan(self, n_items: int) -> str:
        return f": {len(self.branches)} branches + merge ({self.merge.spec})"

    def run(self, items: list[Item], results: ResultsFile, decoding: Decoding, cache: GenerationCache | None,
            progress: Progress) -> dict[str, Any]:
        return run_ace_m3(items, self.branch_judges, self.conclusion_judge, self.templates, decoding, self.protocol, results,
                          base_dir=Path(self.options.items).resolve().parent, cache=cache, progress=progress)

    def summarize(self, records: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
        summary = summarize(records)
        summary.update(template=self.templates.describe(), merge=self.merge.spec, scale=list(self.protocol.scale), run=stats)
        return summary

    def counted(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upstream failures are consequences of branch failures, counted there."""
        return [r for r in records if r.get("parse_status") != "upstream_failed"]

    def gate(self, summary: dict[str, Any], fail_below: float) -> str | None:
        final = summary["criteria"].get("conclusion:overall", {})
        if final.get("mean") is not None and final["mean"] < fail_below:
            return f"mean final score {final['mean']:.3f} below --fail-below {fail_below:g}"
        return None

    def manifest_parameters(self) -> dict[str, Any]:
        return {"branch_judges": {k: v.path for k, v in self.branch_judges.items()},
                "conclusion_judge": self.conclusion_judge.path if self.conclusion_judge else None, "merge": self.merge.spec,
                "scale": list(self.protocol.scale), "modality": self.modality}
