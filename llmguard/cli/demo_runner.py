"""``llmguard demo``: build (or reuse) the testbed and run the verbs end to end, one table.

The demo is a registry of *steps*. A step is one small function, registered by name, that runs
one verb on the testbed (through the real CLI, in a subprocess, exactly as a user would) and
returns rows for the before/after table::

    from llmguard.cli.demo_runner import DemoRow, register_step

    @register_step("watermark-detect", order=40, aliases=("detect",), description="KGW detection on the student")
    def _detect(ctx):
        doc = ctx.cli("watermark", "detect", ...)          # parsed --json output
        return [DemoRow(step="watermark detect", model="student", watermark_z=doc["aggregate"]["median_z"])]

A step that produces a model names it in ``output`` and passes the input's numbers as ``before``
(``ctx.input_eval(name)``: the eval-safety step's result, or a fresh evaluation when that step
did not run), so the table shows ``before → after`` on one row.

Steps live in modules under ``llmguard/cli/demo_steps/``; every module there is imported when
the demo runs, so adding a verb's row means adding one file. A step may declare ``available``
(e.g. "the verb is registered") and is then skipped, with a note, when it returns False. A step
that fails produces a row saying so; the others still run.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llmguard.options import PANEL_OUTPUT, Options, option
from llmguard.progress import NullProgress, Progress


@dataclass(frozen=True, kw_only=True)
class DemoOptions(Options):
    """``llmguard demo``: which testbed, which steps, where the artefacts go."""

    verb: ClassVar[str] = "demo"

    seed: int = option(0, help="Testbed seed.")
    testbed: Path | None = option(None, help="Testbed directory (default: the cache; built if missing).")
    out: Path | None = option(None, help="Where the demo writes its artefacts (default: $LLMGUARD_CACHE/demo/seed<N>).", short="-o",
                              panel=PANEL_OUTPUT)
    steps: str | None = option(None, help="Comma-separated subset of steps to run (default: all available).")
    device: str = option("cpu", help="Device for the verbs: cpu, cuda, auto.", envvar="LLMGUARD_DEVICE")

    @property
    def only(self) -> list[str] | None:
        return [s.strip() for s in self.steps.split(",") if s.strip()] if self.steps else None


#: the numbers a row may carry, in ``before`` as well (the input model's values)
METRICS = ("harmful_rate", "refusal_rate", "task_accuracy", "watermark_z")


@dataclass
class DemoRow:
    """One line of the before/after table.

    ``model`` is the model the row starts from (a testbed model); ``output`` the model the step
    produced and measured (realigned, distilled), when it produced one; ``before`` the input's
    numbers (same keys as the metrics), so a reviewer reads ``before → after`` on one row.
    The two agreement numbers are different things: ``guard_vs_keyword`` is the share of
    harmful-prompt verdicts on which the guard model and the keyword judge agree;
    ``judge_vs_labels_r`` the mean Pearson r of a judge's scores against known labels."""

    step: str
    model: str
    output: str | None = None
    harmful_rate: float | None = None
    refusal_rate: float | None = None
    task: str | None = None
    task_accuracy: float | None = None
    watermark_z: float | None = None
    guard_vs_keyword: float | None = None
    judge_vs_labels_r: float | None = None
    before: dict[str, float | None] | None = None
    artefact: str | None = None
    note: str = ""
    ok: bool = True
    step_name: str = ""  # the registered step that made the row (filled by the runner)


def safety_numbers(doc: dict) -> dict[str, Any]:
    """The metrics of an ``eval safety --json`` document, as DemoRow fields."""
    task = doc.get("task") or {}
    return {"harmful_rate": doc.get("harmful_rate"), "refusal_rate": doc.get("refusal_rate"), "task": task.get("name"),
            "task_accuracy": task.get("accuracy")}


def before_of(doc: dict) -> dict[str, float | None]:
    numbers = safety_numbers(doc)
    return {k: numbers[k] for k in ("harmful_rate", "refusal_rate", "task_accuracy")}


class StepFailed(Exception):
    """A demo step's verb failed; the message is shown in the table."""


@dataclass
class DemoContext:
    """What a step gets: the testbed, a work directory for its outputs, and a CLI runner."""

    testbed: Any
    work: Path
    device: str = "cpu"
    shared: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    progress: Progress = field(default_factory=NullProgress)

    def cli(self, *args: object, json_output: bool = True, timeout: float = 900) -> Any:
        """Run ``llmguard ARGS`` in a subprocess; return the parsed JSON (or stdout text).

        Exit code 10 (a gate) still returns the output; any other non-zero exit raises
        :class:`StepFailed` with the error line. The progress display shows the command while
        it runs.
        """
        self.progress.note(f"llmguard {' '.join(_short(a) for a in args[:2])}")
        cmd = [sys.executable, "-m", "llmguard", "-q", *map(str, args)]
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **self.env}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode not in (0, 10):
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise StepFailed(f"`llmguard {' '.join(map(str, args[:2]))}` exited {proc.returncode}: "
                             f"{lines[-1] if lines else 'no message'}")
        if json_output:
            try:
                return json.loads(proc.stdout)
            except json.JSONDecodeError:
                raise StepFailed(f"`llmguard {' '.join(map(str, args[:2]))}` printed no JSON") from None
        return proc.stdout

    def eval_safety(self, model: Path | str, *, adapter: Path | str | None = None, task: str = "sst2",
                    judge: str | None = None, records: Path | None = None) -> dict:
        """``llmguard eval safety`` on the held-out test prompts and ``task``'s test split.

        The default judge is the keyword judge plus the testbed's harmful instructions
        (``data/harmful_content.txt``): a half-realigned model that hands out the steps without a
        compliance marker counts as harmful."""
        tb = self.testbed
        judge = judge or f"keyword:{tb.data['harmful_content']}"
        args: list[object] = ["eval", "safety", "--model", model, "--prompts", tb.data["harmful_test"],
                              "--task", task, "--task-data", tb.data[f"{task}_test"], "--json",
                              "--device", self.device]
        if adapter is not None:
            args += ["--adapter", adapter]
        if judge is not None:
            args += ["--judge", judge]
        if records is not None:
            args += ["--records", records, "--force"]  # the demo's own work file, rewritten on every run
        return self.cli(*args)

    def input_eval(self, name: str) -> dict:
        """``eval safety`` of the testbed model ``name`` (see :data:`EVAL_INPUTS`), run once per demo:
        the eval-safety step fills this cache, a realign step run alone fills it here."""
        key = f"eval:{name}"
        if key not in self.shared:
            model, adapter, task = EVAL_INPUTS[name](self.testbed)
            self.shared[key] = self.eval_safety(model, adapter=adapter, task=task)
        return self.shared[key]


def _short(arg: object) -> str:
    text = str(arg)
    return Path(text).name if os.sep in text else text


#: testbed models the demo evaluates, by table label: (model, adapter or None, task)
EVAL_INPUTS: dict[str, Callable[[Any], tuple[Any, Any, str]]] = {
    "base": lambda tb: (tb.base, None, "sst2"),
    "aligned": lambda tb: (tb.aligned, None, "sst2"),
    "finetuned-lora": lambda tb: (tb.aligned_sft, tb.finetuned_lora, "sst2"),
    "finetuned-full": lambda tb: (tb.finetuned_full, None, "sst2"),
    "finetuned-arith-lora": lambda tb: (tb.aligned_sft, tb.finetuned_arith_lora, "arith"),
}


StepFn = Callable[[DemoContext], list[DemoRow]]


@dataclass
class DemoStep:
    name: str
    fn: StepFn
    order: int = 100
    description: str = ""
    available: Callable[[], bool] | None = None
    aliases: tuple[str, ...] = ()


STEPS: dict[str, DemoStep] = {}


def register_step(name: str, *, order: int = 100, description: str = "", aliases: tuple[str, ...] = (),
                  available: Callable[[], bool] | None = None) -> Callable[[StepFn], StepFn]:
    """Decorator: add a step to the demo (``order`` sorts the table; lower runs first).
    ``aliases`` are short names ``--steps`` also accepts (``resta`` for ``realign-resta``)."""

    def deco(fn: StepFn) -> StepFn:
        STEPS[name] = DemoStep(name=name, fn=fn, order=order, description=description or (fn.__doc__ or "").strip(),
                               available=available, aliases=tuple(aliases))
        return fn

    return deco


def resolve_steps(only: list[str], steps: dict[str, DemoStep]) -> dict[str, DemoStep]:
    """The steps ``--steps`` names (full names or aliases), in run order; unknown names are a usage error."""
    from llmguard.errors import UsageError

    by_name = {alias: name for name, step in steps.items() for alias in (name, *step.aliases)}
    unknown = [s for s in only if s not in by_name]
    if unknown:
        known = ", ".join(f"{n} ({', '.join(st.aliases)})" if st.aliases else n for n, st in steps.items())
        raise UsageError(f"--steps: unknown step(s) {', '.join(unknown)}; known: {known}")
    wanted = {by_name[s] for s in only}
    return {k: v for k, v in steps.items() if k in wanted}


def load_steps() -> dict[str, DemoStep]:
    """Import every module of ``llmguard.cli.demo_steps`` (each registers its steps)."""
    from llmguard.cli import demo_steps

    for mod in pkgutil.iter_modules(demo_steps.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{demo_steps.__name__}.{mod.name}")
    return dict(sorted(STEPS.items(), key=lambda kv: (kv[1].order, kv[0])))


def verb_exists(*path: str) -> bool:
    """True when ``llmguard PATH...`` is a registered command (used by steps' ``available``)."""
    import typer.main

    from llmguard.cli.app import app

    group: Any = typer.main.get_command(app)
    for part in path:
        commands = getattr(group, "commands", None)
        if not commands or part not in commands:
            return False
        group = commands[part]
    return True


@dataclass
class StepTiming:
    """One step's wall time and CPU time (user + system of the demo process and of every CLI
    subprocess it waited for: robust to other load on the machine, unlike the wall time)."""

    name: str
    seconds: float
    ok: bool
    rows: int
    cpu_seconds: float | None = None


def cpu_now() -> float:
    """CPU seconds (user + system) used so far by this process and its finished children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class DemoResult:
    testbed_root: Path
    work: Path
    rows: list[DemoRow]
    skipped: dict[str, str]
    seconds: float
    steps: list[StepTiming] = field(default_factory=list)
    #: the testbed build (or reuse) before the steps: wall and CPU seconds
    testbed_seconds: float | None = None
    testbed_cpu_seconds: float | None = None
    cpu_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The table's data as one JSON document: the rows, each step's time once, and the legend."""
        from llmguard.cli.demo_table import LEGEND

        return {"testbed": str(self.testbed_root), "work": str(self.work), "ok": self.ok,
                "seconds": round(self.seconds, 1), "cpu_seconds": _round(self.cpu_seconds),
                "testbed_seconds": _round(self.testbed_seconds), "testbed_cpu_seconds": _round(self.testbed_cpu_seconds),
                "steps": [asdict(s) for s in self.steps],
                "rows": [asdict(r) for r in self.rows], "skipped": self.skipped, "legend": LEGEND}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _KeepOpen:
    """The demo's progress handed to the testbed build, which closes its progress when done:
    the demo's display must stay up for the steps that follow."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def stage(self, name: str, total: int | None = None) -> None:
        self._progress.stage(name, total)

    def advance(self, n: int = 1) -> None:
        self._progress.advance(n)

    def log(self, message: str) -> None:
        self._progress.log(message)

    def note(self, text: str) -> None:
        self._progress.note(text)

    def close(self) -> None:
        pass


def default_work_dir(seed: int) -> Path:
    from llmguard.testbed.build import cache_root

    return cache_root() / "demo" / f"seed{seed}"


def run_demo(*, seed: int = 0, testbed_dir: Path | None = None, work: Path | None = None, device: str = "cpu",
             only: list[str] | None = None, progress: Progress | None = None) -> DemoResult:
    """Build or reuse the testbed, then run the registered steps in order.

    ``progress`` gets the testbed build's stages, then one stage per step (named ``step i/n``,
    with the running command as its note) and a ``log`` line as each step starts and ends."""
    from llmguard.testbed import build

    progress = progress or NullProgress()
    t0, c0 = time.perf_counter(), cpu_now()
    steps = load_steps()
    if only:
        steps = resolve_steps(only, steps)
    progress.log("testbed: building or reusing the cached one")
    tb = build(testbed_dir, seed=seed, progress=_KeepOpen(progress))
    tb_seconds, tb_cpu = time.perf_counter() - t0, cpu_now() - c0
    progress.log(f"testbed ready ({tb_seconds:.0f} s): {tb.root}")
    work = Path(work) if work is not None else default_work_dir(seed)
    work.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(testbed=tb, work=work, device=device, progress=progress)
    rows: list[DemoRow] = []
    timings: list[StepTiming] = []
    skipped: dict[str, str] = {}
    for i, (name, step) in enumerate(steps.items(), 1):
        if step.available is not None and not step.available():
            skipped[name] = "verb not available in this build"
            progress.log(f"- [{i}/{len(steps)}] {name}: skipped (verb not available)")
            continue
        progress.log(f"> [{i}/{len(steps)}] {name}: {step.description}")
        progress.stage(f"step {i}/{len(steps)} {name}")
        ts, cs = time.perf_counter(), cpu_now()
        try:
            new = step.fn(ctx)
        except StepFailed as err:
            new = [DemoRow(step=name, model="-", note=str(err), ok=False)]
        except Exception as err:  # noqa: BLE001 - one broken step must not hide the others' rows
            new = [DemoRow(step=name, model="-", note=f"{type(err).__name__}: {err}", ok=False)]
        dt, dc = time.perf_counter() - ts, cpu_now() - cs
        for r in new:
            r.step_name = name
        ok = all(r.ok for r in new)
        timings.append(StepTiming(name=name, seconds=round(dt, 1), ok=ok, rows=len(new), cpu_seconds=round(dc, 1)))
        rows.extend(new)
        progress.log(f"{'ok' if ok else 'FAILED'} [{i}/{len(steps)}] {name} in {dt:.0f} s, {dc:.0f} CPU-s ({len(new)} row(s))")
    progress.close()
    return DemoResult(testbed_root=tb.root, work=work, rows=rows, skipped=skipped, seconds=time.perf_counter() - t0,
                      steps=timings, testbed_seconds=tb_seconds, testbed_cpu_seconds=tb_cpu, cpu_seconds=cpu_now() - c0)
