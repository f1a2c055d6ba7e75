"""``llmguard demo``: build (or reuse) the testbed and run the verbs end to end, one table.

The demo is a registry of *steps*. A step is one small function, registered by name, that runs
one verb on the testbed (through the real CLI: the console script's Typer app, its parsing,
error handling and exit codes, run in the demo's process so torch is imported once; ``--isolated``
runs each command as its own ``python -m llmguard`` subprocess instead) and returns rows for the
before/after table::

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

On two cores (``jobs=2``, :func:`run_demo`) a second process runs steps beside the first: a
step declares ``needs_testbed=False`` when it uses no Llama-testbed artefact (it can then run
while the testbed builds), ``cost`` (its CPU seconds: longest first) and ``parts`` (independent
parts, ``fn(ctx, part)``, which the two processes may share).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
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
    jobs: int = option(0, help="Processes for the steps. 1: one after the other, in this process. 2: a second process "
                               "starts with the steps that need no Llama testbed while this one builds or reuses it, then "
                               "both take the next step (or part of one) nobody took, longest first, each with one torch "
                               "thread. 0: 2 on two cores or more, else 1.")
    fresh: bool = option(False, help="Run every command again: reuse no stored result (the watermark attacks' results "
                                     "are reused when every input byte, flag, the code and the library versions match).")
    isolated: bool = option(False, help="Run every verb in its own `python -m llmguard` subprocess (slower: torch is "
                                        "imported per command) instead of in the demo's process.")

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
    #: run every command in its own ``python -m llmguard`` subprocess (``demo --isolated``)
    isolated: bool = False
    #: two processes share this run: steps are claimed, input evaluations shared, through files
    #: in ``work/.demo-run`` (``jobs=2``)
    share_files: bool = False
    #: run every command, reusing no stored result (``demo --fresh``; see :meth:`cli_reusable`)
    fresh: bool = False
    #: how the second process gets the testbed when it claims a step that needs it
    testbed_loader: Callable[[], Any] | None = None

    def need_testbed(self) -> Any:
        if self.testbed is None and self.testbed_loader is not None:
            self.testbed = self.testbed_loader()
        return self.testbed

    def cli(self, *args: object, json_output: bool = True, timeout: float = 900, isolated: bool | None = None) -> Any:
        """Run ``llmguard ARGS``; return the parsed JSON (or stdout text).

        By default the command runs in this process through the same Typer app, argument
        parsing, error handling and exit codes as the ``llmguard`` console script (torch and
        transformers are imported once per demo instead of once per command); ``isolated=True``
        (or the demo's ``--isolated``) runs ``python -m llmguard ARGS`` in a subprocess instead,
        with ``timeout`` seconds. Exit code 10 (a gate) still returns the output; any other
        non-zero exit raises :class:`StepFailed` with the error line. The progress display shows
        the command while it runs.
        """
        self.progress.note(f"llmguard {' '.join(_short(a) for a in args[:2])}")
        argv = ["-q", *map(str, args)]
        if self.isolated if isolated is None else isolated:
            code, out, err = _run_subprocess(argv, {"NO_COLOR": "1", "COLUMNS": "200", **self.env}, timeout)
        else:
            code, out, err = run_in_process(argv)
        if code not in (0, 10):
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            raise StepFailed(f"`llmguard {' '.join(map(str, args[:2]))}` exited {code}: "
                             f"{lines[-1] if lines else 'no message'}")
        if json_output:
            try:
                return json.loads(out)
            except json.JSONDecodeError:
                raise StepFailed(f"`llmguard {' '.join(map(str, args[:2]))}` printed no JSON") from None
        return out

    def cli_reusable(self, *args: object, output: Path) -> tuple[Any, str | None]:
        """:meth:`cli` for a command whose result may be reused (:mod:`llmguard.cli.demo_cache`):
        ``(document, None)`` when it ran, ``(document, key)`` when the stored result of the
        identical command (every argument, the bytes of every input, the code, the library
        versions) was reused and its output directory copied to ``output``. ``args`` hold
        ``-o OUTPUT`` as every other command; the key leaves the output path out."""
        from llmguard.cli import demo_cache

        argv = [str(a) for a in args]
        keyed = [("<output>" if a == str(output) else a) for a in argv]
        key = None if self.fresh else demo_cache.command_key(keyed)
        if key is not None:
            doc = demo_cache.load(key, output)
            if doc is not None:
                self.progress.log(f"  reused the stored result of `llmguard {' '.join(map(_short, argv[:2]))}` (key {key[:12]})")
                return doc, key
        doc = self.cli(*args)
        if key is not None:
            demo_cache.store(key, doc, output)
        return doc, None

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
            # the demo's second process reads what this one measured (same run, same work dir)
            shared_file = self.work / SHARED_DIR / f"eval-{name}.json" if self.share_files else None
            if shared_file is not None and shared_file.is_file():
                self.shared[key] = json.loads(shared_file.read_text())
            else:
                model, adapter, task = EVAL_INPUTS[name](self.testbed)
                self.shared[key] = self.eval_safety(model, adapter=adapter, task=task)
                if shared_file is not None:
                    tmp = shared_file.with_name(f"{shared_file.name}.{os.getpid()}.tmp")
                    tmp.write_text(json.dumps(self.shared[key]))
                    tmp.replace(shared_file)
        return self.shared[key]

    def claim(self, step: str) -> bool:
        """True when this process is the first to take ``step`` (always, without a second process)."""
        if not self.share_files:
            return True
        try:
            os.close(os.open(self.work / SHARED_DIR / f"claim-{step}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


#: where the two processes of one ``jobs=2`` run share their claims and input evaluations
SHARED_DIR = ".demo-run"


def _run_subprocess(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "llmguard", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``llmguard ARGV`` in this process: (exit code, stdout, stderr).

    The command goes through the console script's path (the root Typer app in standalone mode:
    the same parsing, ``reports_errors`` handling and exit codes); its stdout and stderr are
    captured, and the global CLI state (``-q``, ``-v``, ``--json``) is restored after, so the
    demo's own flags and display are untouched. An interrupted command (exit 130) interrupts the
    demo, as Ctrl-C does to a subprocess's parent.
    """
    import dataclasses
    import gc
    import io

    from llmguard.cli.app import app
    from llmguard.cli.output import state

    saved = dataclasses.asdict(state)
    out, err = io.StringIO(), io.StringIO()
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        app(args=argv, prog_name="llmguard", standalone_mode=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception as exc:  # noqa: BLE001 - what the console script would end with (exit 1)
        err.write(f"error: internal error: {type(exc).__name__}: {exc}\n")
        code = 1
    finally:
        sys.stdout, sys.stderr = real_out, real_err
        for key, value in saved.items():
            setattr(state, key, value)
        gc.collect()  # the command's models (reference cycles in transformers modules) go now
    if code == 130:
        raise KeyboardInterrupt
    return code, out.getvalue(), err.getvalue()


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


StepFn = Callable[..., list[DemoRow]]  # fn(ctx), or fn(ctx, part) for a step with parts


@dataclass
class DemoStep:
    name: str
    fn: StepFn
    order: int = 100
    description: str = ""
    available: Callable[[], bool] | None = None
    aliases: tuple[str, ...] = ()
    #: False: the step uses no Llama-testbed artefact (``ctx.testbed`` is None when it runs in the
    #: second process of ``jobs=2``)
    needs_testbed: bool = True
    #: CPU seconds the step takes (cached testbed, one thread): the two processes of ``jobs=2``
    #: take the longest steps first
    cost: float = 10.0
    #: independent parts (e.g. one per input model): ``fn(ctx, part)`` returns that part's rows;
    #: with ``jobs=2`` the parts of one step may run in both processes. No parts: ``fn(ctx)``.
    parts: tuple[str, ...] = ()

    def units(self) -> list["Unit"]:
        share = self.cost / max(1, len(self.parts))
        return [Unit(self.name, part, share) for part in self.parts] if self.parts else [Unit(self.name, None, self.cost)]

    def run(self, ctx: "DemoContext", part: str | None) -> list[DemoRow]:
        return self.fn(ctx) if part is None else self.fn(ctx, part)  # type: ignore[call-arg]


@dataclass(frozen=True)
class Unit:
    """What one process takes at a time: a step, or one part of it."""

    step: str
    part: str | None
    cost: float

    @property
    def key(self) -> str:
        return self.step if self.part is None else f"{self.step}@{self.part}"


@dataclass
class UnitResult:
    step: str
    part: str | None
    rows: list[DemoRow]
    seconds: float
    cpu_seconds: float


STEPS: dict[str, DemoStep] = {}


def register_step(name: str, *, order: int = 100, description: str = "", aliases: tuple[str, ...] = (),
                  available: Callable[[], bool] | None = None, needs_testbed: bool = True,
                  cost: float = 10.0, parts: tuple[str, ...] = ()) -> Callable[[StepFn], StepFn]:
    """Decorator: add a step to the demo (``order`` sorts the table; lower runs first).
    ``aliases`` are short names ``--steps`` also accepts (``resta`` for ``realign-resta``);
    ``needs_testbed=False`` for a step that uses no Llama-testbed artefact (it may then run in a
    second process beside the testbed build: ``run_demo(jobs=2)``); ``cost``: its CPU
    seconds on a cached testbed (the two processes take the longest steps first); ``parts``:
    independent parts, ``fn(ctx, part)`` each (see :class:`DemoStep`)."""

    def deco(fn: StepFn) -> StepFn:
        STEPS[name] = DemoStep(name=name, fn=fn, order=order, description=description or (fn.__doc__ or "").strip(),
                               available=available, aliases=tuple(aliases), needs_testbed=needs_testbed, cost=cost,
                               parts=tuple(parts))
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


def default_jobs() -> int:
    """2 where the machine has two cores or more (the side steps run beside the others), else 1."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_demo(*, seed: int = 0, testbed_dir: Path | None = None, work: Path | None = None, device: str = "cpu",
             only: list[str] | None = None, progress: Progress | None = None, isolated: bool = False,
             jobs: int = 1, fresh: bool = False) -> DemoResult:
    """Build or reuse the testbed, then run the registered steps.

    ``progress`` gets the testbed build's stages, then one stage per step (named ``step i/n``,
    with the running command as its note) and a ``log`` line as each step starts and ends.

    ``jobs=1``: the steps run one after the other, in the registry's order. ``jobs=2``: a second
    process (:mod:`llmguard.cli.demo_worker`) runs steps beside this one. It starts with the
    steps that need no Llama testbed (the tiny judge's and the watermark testbed's, which build
    their own artefacts) while this process builds or reuses the testbed; then each process
    takes the next step nobody has taken, longest first (``cost``), and the input models'
    evaluations are measured once and shared. Both processes run their verbs with one torch
    thread, so two cores are not oversubscribed (every testbed build runs with one thread
    anyway). Every step still runs exactly once, with the same commands; the table keeps the
    registry's order."""
    from llmguard.testbed import build
    from llmguard.testbed.provenance import torch_threads

    progress = progress or NullProgress()
    t0, c0 = time.perf_counter(), cpu_now()
    steps = load_steps()
    if only:
        steps = resolve_steps(only, steps)
    work = Path(work) if work is not None else default_work_dir(seed)
    work.mkdir(parents=True, exist_ok=True)
    numbers = {name: i for i, name in enumerate(steps, 1)}
    units = [u for step in steps.values() for u in step.units()]
    two = jobs >= 2 and len(units) >= 2
    if two:
        shutil.rmtree(work / SHARED_DIR, ignore_errors=True)
        (work / SHARED_DIR).mkdir()
    worker = _SideWorker(steps, units, numbers, seed=seed, testbed_dir=testbed_dir, work=work, device=device,
                         isolated=isolated, fresh=fresh, progress=progress) if two else None
    skipped: dict[str, str] = {}
    try:
        with torch_threads(1 if two else None):
            progress.log("testbed: building or reusing the cached one")
            tb = build(testbed_dir, seed=seed, progress=_KeepOpen(progress))
            tb_seconds, tb_cpu = time.perf_counter() - t0, cpu_now() - c0
            progress.log(f"testbed ready ({tb_seconds:.0f} s): {tb.root}")
            ctx = DemoContext(testbed=tb, work=work, device=device, progress=progress, isolated=isolated,
                              env={"OMP_NUM_THREADS": "1"} if two else {}, share_files=two, fresh=fresh)
            results = run_units(ctx, steps, schedule(steps, units, testbed_first=True) if two else units, numbers, skipped)
            if worker is not None:
                progress.stage("waiting for the second process")
                results += worker.wait(skipped)
                # a unit the second process never took (it failed early) runs here
                left = [u for u in units if not (work / SHARED_DIR / f"claim-{u.key}").exists()]
                results += run_units(ctx, steps, left, numbers, skipped)
    finally:
        if worker is not None:
            worker.stop()
    if two:
        shutil.rmtree(work / SHARED_DIR, ignore_errors=True)
    rows, timings = assemble(steps, results)
    progress.close()
    return DemoResult(testbed_root=tb.root, work=work, rows=rows, skipped=skipped, seconds=time.perf_counter() - t0,
                      steps=timings, testbed_seconds=tb_seconds, testbed_cpu_seconds=tb_cpu, cpu_seconds=cpu_now() - c0)


def assemble(steps: dict[str, DemoStep], results: list[UnitResult]) -> tuple[list[DemoRow], list[StepTiming]]:
    """The table's rows in the registry's order (a step's parts in its order) and one timing per step
    (the time spent on it: the sum over its parts, whichever process ran them)."""
    rows: list[DemoRow] = []
    timings: list[StepTiming] = []
    for name, step in steps.items():
        parts = [p.part for p in step.units()]
        mine = sorted((r for r in results if r.step == name), key=lambda r: parts.index(r.part))
        if not mine:
            continue
        new = [row for r in mine for row in r.rows]
        timings.append(StepTiming(name=name, seconds=round(sum(r.seconds for r in mine), 1), ok=all(r.ok for r in new),
                                  rows=len(new), cpu_seconds=round(sum(r.cpu_seconds for r in mine), 1)))
        rows.extend(new)
    return rows, timings


def schedule(steps: dict[str, DemoStep], units: list[Unit], *, testbed_first: bool) -> list[Unit]:
    """The order one of the two processes tries the units in: those it can start at once first
    (the Llama-testbed steps for the process that builds the testbed, the others for the second
    process), each group longest first (``cost``)."""
    return sorted(units, key=lambda u: (steps[u.step].needs_testbed != testbed_first, -u.cost))


def run_units(ctx: DemoContext, steps: dict[str, DemoStep], units: list[Unit], numbers: dict[str, int],
              skipped: dict[str, str], *, where: str = "",
              report: Callable[[list[UnitResult]], None] | None = None) -> list[UnitResult]:
    """Run ``units`` one after the other in this process (those no other process has claimed);
    a step that is not available goes into ``skipped``. ``report`` gets the results so far after
    each unit."""
    progress = ctx.progress
    total = len(numbers)
    results: list[UnitResult] = []
    for unit in units:
        if not ctx.claim(unit.key):
            continue
        name, step, i = unit.step, steps[unit.step], numbers[unit.step]
        label = name if unit.part is None else f"{name} ({unit.part})"
        if step.available is not None and not step.available():
            if name not in skipped:
                skipped[name] = "verb not available in this build"
                progress.log(f"- [{i}/{total}] {name}: skipped (verb not available)")
            continue
        progress.log(f"> [{i}/{total}] {label}{where}: {step.description}")
        progress.stage(f"step {i}/{total} {label}")
        ts, cs = time.perf_counter(), cpu_now()
        try:
            if step.needs_testbed:
                ctx.need_testbed()
            new = step.run(ctx, unit.part)
        except StepFailed as err:
            new = [DemoRow(step=label, model="-", note=str(err), ok=False)]
        except Exception as err:  # noqa: BLE001 - one broken step must not hide the others' rows
            new = [DemoRow(step=label, model="-", note=f"{type(err).__name__}: {err}", ok=False)]
        dt, dc = time.perf_counter() - ts, cpu_now() - cs
        for r in new:
            r.step_name = name
        ok = all(r.ok for r in new)
        results.append(UnitResult(name, unit.part, new, round(dt, 1), round(dc, 1)))
        progress.log(f"{'ok' if ok else 'FAILED'} [{i}/{total}] {label}{where} in {dt:.0f} s, {dc:.0f} CPU-s ({len(new)} row(s))")
        if report is not None:
            report(results)
    return results


#: prefix of the second process's stderr lines that are progress log lines (the rest is forwarded as is)
WORKER_LOG = "demo-log: "


class _SideWorker:
    """The second process of ``jobs=2``: ``python -m llmguard.cli.demo_worker`` runs the units it
    claims (see :func:`run_demo`); its log lines go to this demo's display as they come, its
    results come back as JSON (written after every unit)."""

    def __init__(self, steps: dict[str, DemoStep], units: list[Unit], numbers: dict[str, int], *, seed: int,
                 testbed_dir: Path | None, work: Path, device: str, isolated: bool, fresh: bool, progress: Progress) -> None:
        import threading

        self.result = work / SHARED_DIR / "worker.json"
        config = {"units": [[u.step, u.part] for u in schedule(steps, units, testbed_first=False)], "numbers": numbers,
                  "seed": seed, "testbed": None if testbed_dir is None else str(testbed_dir), "work": str(work),
                  "device": device, "isolated": isolated, "fresh": fresh, "result": str(self.result)}
        self.proc = subprocess.Popen([sys.executable, "-m", "llmguard.cli.demo_worker", json.dumps(config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.stderr: list[str] = []

        def forward() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if line.startswith(WORKER_LOG):
                    progress.log(line[len(WORKER_LOG):].rstrip("\n"))
                else:
                    self.stderr.append(line)

        self.reader = threading.Thread(target=forward, daemon=True)
        self.reader.start()

    def wait(self, skipped: dict[str, str]) -> list[UnitResult]:
        code = self.proc.wait()
        self.reader.join()
        try:
            doc = json.loads(self.result.read_text())
        except (OSError, ValueError):
            doc = {"results": [], "skipped": {}, "running": None}
        skipped.update(doc["skipped"])
        results = [UnitResult(r["step"], r["part"], [DemoRow(**row) for row in r["rows"]], r["seconds"], r["cpu_seconds"])
                   for r in doc["results"]]
        running = doc.get("running")
        if code != 0 and running:  # it died inside a unit: that unit's row says so
            lines = [ln.strip() for ln in self.stderr if ln.strip()]
            why = f"the demo's second process exited {code}: {lines[-1] if lines else 'no message'}"
            results.append(UnitResult(running[0], running[1], [DemoRow(step=running[0], model="-", note=why, ok=False,
                                                                       step_name=running[0])], 0.0, 0.0))
        return results

    def stop(self) -> None:
        """End the second process if it still runs (this one failed or was interrupted)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
