"""Dev-split hyper-parameter search for NLSR: a safety–utility table and a recommended point.

The paper tuned ExPO's α on a dev slice of BeaverTails and reported test numbers separately
(research/realign.md §2.1); no released tool automates it. ``nlsr_search`` runs ``nlsr`` for every
point of a small grid (α, budget, mask ratio, scorer, ...), measures each realigned model with
``eval safety`` on DEV prompts (and a DEV task split), and keeps the point with the lowest
harmful rate among those whose task accuracy stays within ``max_task_drop`` points of the
fine-tuned model; ties go to the smaller edit. Only the current best output is kept on disk, so
the search needs at most two outputs' worth of space. The chosen output is moved to OUT with the
whole table in ``nlsr_search.json`` and in its manifest.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import UsageError
from llmguard.io.manifest import MANIFEST_NAME
from llmguard.io.writer import check_output_path
from llmguard.progress import NullProgress, Progress

SEARCH_TABLE = "nlsr_search.json"
MAX_POINTS = 64

#: grid keys (as on the command line) -> (nlsr keyword, value parser)
GRID_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "alpha": ("alpha", float),
    "budget": ("budget", str),
    "threshold": ("threshold", float),
    "mask-ratio": ("mask_ratio", float),
    "scorer": ("scorer", str),
    "unit": ("unit", str),
    "actsvd-keep": ("actsvd_keep", float),
    "amplify-mode": ("amplify_mode", str),
}


def parse_grid(spec: str) -> list[dict[str, Any]]:
    """``"alpha=0.5,0.9;budget=0.25,0.5"`` -> the cartesian product as nlsr keyword dicts."""
    names: list[str] = []
    axes: list[list[Any]] = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, sep, values = part.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not sep or key not in GRID_KEYS:
            raise UsageError(f"--search: {part!r}: expected KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
        keyword, parse = GRID_KEYS[key]
        if keyword in names:
            raise UsageError(f"--search: {key} is given twice")
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not raw:
            raise UsageError(f"--search: {key} has no values")
        try:
            axes.append([parse(v) for v in raw])
        except ValueError:
            raise UsageError(f"--search: {key}={values.strip()!r}: not a list of numbers") from None
        names.append(keyword)
    if not names:
        raise UsageError("--search: the grid is empty (e.g. --search 'alpha=0.5,0.9;budget=0.25,0.5')")
    points = [dict(zip(names, combo)) for combo in itertools.product(*axes)]
    if len(points) > MAX_POINTS:
        raise UsageError(f"--search: {len(points)} points; at most {MAX_POINTS} (each one is a full realign and evaluation)")
    return points


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

    def evaluate(path: Path) -> tuple[float, float | None]:
        report = evaluate_safety(path, prompts=prompts, task=task, task_items=task_items, judge=judge, device=device,
                                 max_new_tokens=max_new_tokens)
        accuracy = report.task["accuracy"] if report.task else None
        return float(report.harmful_rate or 0.0), accuracy

    return evaluate


def nlsr_search(
    finetuned: str | os.PathLike[str],
    output: str | os.PathLike[str],
    grid: Sequence[dict[str, Any]],
    evaluate: Evaluator,
    *,
    max_task_drop: float = 5.0,
    force: bool = False,
    progress: Progress | None = None,
    **nlsr_kwargs: Any,
) -> SearchResult:
    """Run ``nlsr`` for every grid point, evaluate each on DEV, move the recommended one to OUT.

    ``nlsr_kwargs`` are the fixed ``nlsr`` arguments; a grid point overrides them. When no point
    keeps the task within ``max_task_drop`` points, nothing is written and ``result.chosen`` is
    None (the CLI exits 10 then).
    """
    from llmguard.realign.nlsr.method import nlsr

    progress = progress or NullProgress()
    if not grid:
        raise UsageError("--search: the grid is empty")
    if nlsr_kwargs.get("dry_run"):
        raise UsageError("--search writes the chosen model; it cannot be combined with --dry-run")
    out = Path(output)
    inputs = [Path(p) for p in (finetuned, nlsr_kwargs.get("aligned"), nlsr_kwargs.get("base"), nlsr_kwargs.get("reference")) if p]
    check_output_path(out, inputs, force)  # refuse before hours of work, not after
    work = out.parent / f".{out.name}.llmguard-search-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        progress.stage("evaluate the fine-tuned model on DEV")
        harmful, task = evaluate(Path(finetuned))
        result = SearchResult({"harmful_rate": harmful, "task_accuracy": task}, max_task_drop=max_task_drop)
        for i, params in enumerate(grid):
            progress.stage(f"search point {i + 1}/{len(grid)}: {describe(params)}")
            t0 = time.perf_counter()
            point_dir = work / f"point-{i}"
            realigned = nlsr(finetuned, point_dir, **{**nlsr_kwargs, **params, "force": False, "progress": progress})
            harmful, task = evaluate(point_dir)
            result.points.append(SearchPoint(dict(params), harmful, task, realigned.patched, realigned.parameters_changed,
                                             round(time.perf_counter() - t0, 3)))
            result.chosen = recommend(result.points, result.baseline["task_accuracy"], max_task_drop)
            for other in list(work.iterdir()):
                if result.chosen is None or other.name != f"point-{result.chosen}":
                    shutil.rmtree(other, ignore_errors=True)
        progress.close()
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
        shutil.rmtree(work, ignore_errors=True)


def describe(params: dict[str, Any]) -> str:
    """A grid point as ``alpha=0.5 mask-ratio=0.3`` (the grid's own spelling)."""
    return " ".join(f"{k.replace('_', '-')}={v}" for k, v in params.items())
