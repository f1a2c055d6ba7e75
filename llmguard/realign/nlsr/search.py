"""Dev-split hyper-parameter search for NLSR: a safety–utility table and a recommended point.

The paper tuned ExPO's α on a dev slice of BeaverTails and reported test numbers separately
; no released tool automates it. ``nlsr_search`` runs ``nlsr`` for every
point of a small grid (α, budget, mask ratio, scorer, ...), measures each realigned model with
``eval safety`` on DEV prompts (and a DEV task split), and keeps the point with the lowest
harmful rate among those whose task accuracy stays within ``max_task_drop`` points of the
fine-tuned model; ties go to the smaller edit. Points that differ only in the selection
(budget, threshold, ...) share one calibration pass and scoring (``AnalysisCache``). Only the current best output is kept on disk, so
the search needs at most two outputs' worth of space. The chosen output is moved to OUT with the
whole table in ``nlsr_search.json`` and in its manifest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import UsageError
from llmguard.io.manifest import MANIFEST_NAME
from llmguard.io.writer import check_output_path
from llmguard.progress import NullProgress, Progress
from llmguard.realign.nlsr.grid import MAX_POINTS, describe, parse_grid  # noqa: F401 - re-exported
from llmguard.realign.nlsr.options import NlsrOptions

SEARCH_TABLE = "nlsr_search.json"


@dataclass
class SearchPoint:
    """One grid point: its parameters and what the realigned model measured on DEV."""

    params: dict[str, Any]
    harmful_rate: float
    task_accuracy: float | None
    modules_patched: int
    values_changed: int
    seconds: float


@dataclass
class SearchResult:
    baseline: dict[str, float | None]
    points: list[SearchPoint] = field(default_factory=list)
    chosen: int | None = None
    output: Path | None = None
    max_task_drop: float = 5.0
    analyses: int = 0  # scorings run (points that change only the selection share one)
    calibration_passes: int = 0  # calibration passes run (points that change only scorer/mask/unit/selection share one)

    def to_dict(self) -> dict[str, Any]:
        return {
            "finetuned": self.baseline,
            "max_task_drop_points": self.max_task_drop,
            "points": [asdict(p) for p in self.points],
            "chosen": self.chosen,
            "chosen_params": None if self.chosen is None else self.points[self.chosen].params,
            "output": None if self.output is None else str(self.output),
        }


def recommend(points: Sequence[SearchPoint], baseline_task: float | None, max_task_drop: float) -> int | None:
    """Index of the lowest harmful rate among points within ``max_task_drop`` points of the
    fine-tuned task accuracy (ties: higher task accuracy, then fewer changed values)."""
    def keeps_task(p: SearchPoint) -> bool:
        return baseline_task is None or p.task_accuracy is None or p.task_accuracy >= baseline_task - max_task_drop / 100 - 1e-12

    eligible = [i for i, p in enumerate(points) if keeps_task(p)]
    if not eligible:
        return None
    return min(eligible, key=lambda i: (points[i].harmful_rate, -(points[i].task_accuracy or 0.0), points[i].values_changed, i))


#: the --max-task-drop window should span at least this many DEV task items
MIN_ITEMS_IN_TASK_WINDOW = 5


def task_window_warning(n_items: int, max_task_drop: float) -> str | None:
    """A warning when the DEV task set is too small for the ``max_task_drop`` window to mean much.

    Why: with few items one answer moves the accuracy by several points, so which settings pass
    the window is decided by one or two answers. On testbed v2 a 52-item task DEV set (a window of
    2.6 items) let the search pick a setting that lost 6.2 sst2 points on TEST; 249 items (12.5)
    did not (docs/realign.md).
    """
    in_window = n_items * max_task_drop / 100
    if n_items <= 0 or in_window >= MIN_ITEMS_IN_TASK_WINDOW:
        return None
    needed = math.ceil(100 * MIN_ITEMS_IN_TASK_WINDOW / max_task_drop) if max_task_drop > 0 else None
    advice = f"; use at least {needed} items" if needed else ""
    return (f"{n_items} DEV task items: one answer moves task accuracy by {100 / n_items:.1f} points, so the "
            f"{max_task_drop:g}-point --max-task-drop window is {in_window:.1f} items wide and the choice rests on a "
            f"few answers{advice}")


Evaluator = Callable[[Path], tuple[float, float | None]]


def safety_evaluator(prompts: Sequence[dict], *, task: str | None = None, task_items: Sequence[dict] | None = None,
                     judge: str = "keyword", device: str = "auto", max_new_tokens: int = 48) -> Evaluator:
    """(harmful rate, task accuracy) of a model or adapter directory on the DEV data."""
    from llmguard.eval.safety import evaluate_safety
    from llmguard.eval.safety_options import EvalSafetyOptions

    def evaluate(path: Path) -> tuple[float, float | None]:
        options = EvalSafetyOptions(model=str(path), prompt_records=prompts or None, task=task, task_records=task_items,
                                    judge=judge, device=device, max_new_tokens=max_new_tokens)
        report = evaluate_safety(options)
        accuracy = report.task["accuracy"] if report.task else None
        return float(report.harmful_rate or 0.0), accuracy

    return evaluate


@dataclass
class DevData:
    """The DEV split a search measures every point on."""

    prompts: list[dict]
    task: str | None = None
    task_items: list[dict] | None = None

    def warning(self, max_task_drop: float) -> str | None:
        return task_window_warning(len(self.task_items), max_task_drop) if self.task_items else None


def load_dev_data(options: NlsrOptions) -> DevData:
    """``--dev-prompts`` and ``--dev-task-data`` read and checked."""
    from llmguard.io.records import read_records

    assert options.dev_prompts is not None, "validated: --search needs --dev-prompts"
    prompts = read_records(options.dev_prompts, required=["prompt"], what="dev prompts")
    items = read_records(options.dev_task_data, required=["prompt", "answer"], what="dev task data") if options.dev_task_data else None
    return DevData(prompts, options.dev_task or ("task" if items else None), items)


def run_search(options: NlsrOptions, progress: Progress | None = None, dev: DevData | None = None) -> SearchResult:
    """``realign nlsr --search``: every grid point of ``options`` measured on its DEV data."""
    from llmguard.realign.nlsr.method import with_reference_calibration

    progress = progress or NullProgress()
    dev = dev or load_dev_data(options)
    evaluate = safety_evaluator(dev.prompts, task=dev.task, task_items=dev.task_items, judge=options.dev_judge, device=options.device)
    base = with_reference_calibration(options.point({}), progress)  # reference pairs are generated once, not per point
    return search(base, options.grid(), evaluate, max_task_drop=options.max_task_drop, progress=progress)


def nlsr_search(
    finetuned: str | os.PathLike[str],
    output: str | os.PathLike[str],
    grid: Sequence[dict[str, Any]],
    evaluate: Evaluator,
    *,
    max_task_drop: float = 5.0,
    progress: Progress | None = None,
    **options: Any,
) -> SearchResult:
    """:func:`search` from keyword arguments: ``options`` are the fixed ``NlsrOptions`` fields."""
    return search(NlsrOptions(finetuned=finetuned, output=output, **options), grid, evaluate, max_task_drop=max_task_drop,
                  progress=progress)


class AnalysisCache:
    """The analyses a grid needs, each kept only while a later point still needs it.

    Points with equal ``analysis_key()`` (a budget or threshold grid) share one calibration
    pass, one scoring and one similarity measurement; only selection and writing are redone.
    Points that differ in the scorer, mask ratio, ActSVD keep or unit but not in the reference or
    the calibration data share the calibration statistics (``stats_cache``).
    """

    def __init__(self, points: Sequence[NlsrOptions], work: Path) -> None:
        from llmguard.realign.nlsr.stats_cache import StatisticsCache

        self.remaining = Counter(p.analysis_key() for p in points)
        self.work = work
        self.kept: dict[tuple, Any] = {}
        self.computed = 0
        self.statistics = StatisticsCache()

    def get(self, point: NlsrOptions, progress: Progress) -> Any:
        from llmguard.realign.nlsr.method import analyze

        key = point.analysis_key()
        if key not in self.kept:
            self.kept[key] = analyze(point, progress, masks_beside=self.work / f"analysis-{self.computed}", stats_cache=self.statistics)
            self.computed += 1
        return self.kept[key]

    def done(self, point: NlsrOptions) -> None:
        key = point.analysis_key()
        self.remaining[key] -= 1
        if self.remaining[key] == 0 and key in self.kept:
            self.kept.pop(key).close()

    def close(self) -> None:
        for analysis in self.kept.values():
            analysis.close()
        self.kept.clear()


def search(
    options: NlsrOptions,
    grid: Sequence[dict[str, Any]],
    evaluate: Evaluator,
    *,
    max_task_drop: float = 5.0,
    progress: Progress | None = None,
) -> SearchResult:
    """Realign with every grid point (``options`` with the point's fields replaced), evaluate each
    on DEV, move the recommended one to ``options.output``.

    When no point keeps the task within ``max_task_drop`` points, nothing is written and
    ``result.chosen`` is None (the CLI exits 10 then).
    """
    from llmguard.realign.nlsr.method import realign

    progress = progress or NullProgress()
    if not grid:
        raise UsageError("--search: the grid is empty")
    if options.dry_run:
        raise UsageError("--search writes the chosen model; it cannot be combined with --dry-run")
    assert options.output is not None
    out = options.output
    inputs = [p for p in (options.finetuned, options.aligned, options.base, options.reference) if p]
    check_output_path(out, inputs, options.force)  # refuse before hours of work, not after
    work = out.parent / f".{out.name}.llmguard-search-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    points = [options.replace(**params, output=work / f"point-{i}", force=False) for i, params in enumerate(grid)]
    cache = AnalysisCache(points, work)
    try:
        progress.stage("evaluate the fine-tuned model on DEV")
        harmful, task = evaluate(Path(options.finetuned))
        result = SearchResult({"harmful_rate": harmful, "task_accuracy": task}, max_task_drop=max_task_drop)
        for i, (params, point) in enumerate(zip(grid, points)):
            progress.stage(f"search point {i + 1}/{len(grid)}: {describe(params)}")
            t0 = time.perf_counter()
            realigned = realign(point, cache.get(point, progress), progress)
            cache.done(point)
            harmful, task = evaluate(point.output)
            result.points.append(SearchPoint(dict(params), harmful, task, realigned.patched, realigned.parameters_changed,
                                             round(time.perf_counter() - t0, 3)))
            result.chosen = recommend(result.points, result.baseline["task_accuracy"], max_task_drop)
            for other in list(work.glob("point-*")):
                if result.chosen is None or other.name != f"point-{result.chosen}":
                    shutil.rmtree(other, ignore_errors=True)
        progress.close()
        result.analyses = cache.computed
        result.calibration_passes = cache.statistics.passes
        if result.chosen is None:
            return result
        chosen_dir = work / f"point-{result.chosen}"
        result.output = out
        table = result.to_dict()
        (chosen_dir / SEARCH_TABLE).write_text(json.dumps(table, indent=2, default=str) + "\n")
        manifest_path = chosen_dir / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        manifest["search"] = table
        manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if out.exists():  # allowed by check_output_path (--force): move it aside, removed with `work`
            os.rename(out, work / "replaced")
        os.rename(chosen_dir, out)
        return result
    finally:
        cache.close()
        shutil.rmtree(work, ignore_errors=True)
