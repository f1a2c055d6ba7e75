"""``llmguard demo``: build (or reuse) the testbed and run the verbs end to end, one table.

The demo is a registry of *steps*. A step is one small function, registered by name, that runs
one verb on the testbed (through the real CLI, in a subprocess, exactly as a user would) and
returns rows for the before/after table::

    from llmguard.cli.demo_runner import DemoRow, register_step

    @register_step("watermark-detect", order=40, description="KGW detection on the student")
    def _detect(ctx):
        doc = ctx.cli("watermark", "detect", ...)          # parsed --json output
        return [DemoRow(step="watermark detect", model="student", watermark_z=doc["median_z"])]

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


@dataclass
class DemoRow:
    """One line of the before/after table."""

    step: str
    model: str
    harmful_rate: float | None = None
    refusal_rate: float | None = None
    task: str | None = None
    task_accuracy: float | None = None
    watermark_z: float | None = None
    judge_agreement: float | None = None
    seconds: float | None = None
    artefact: str | None = None
    note: str = ""
    ok: bool = True


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

    def cli(self, *args: object, json_output: bool = True, timeout: float = 900) -> Any:
        """Run ``llmguard ARGS`` in a subprocess; return the parsed JSON (or stdout text).

        Exit code 10 (a gate) still returns the output; any other non-zero exit raises
        :class:`StepFailed` with the error line.
        """
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
            args += ["--records", records]
        return self.cli(*args)


StepFn = Callable[[DemoContext], list[DemoRow]]


@dataclass
class DemoStep:
    name: str
    fn: StepFn
    order: int = 100
    description: str = ""
    available: Callable[[], bool] | None = None


STEPS: dict[str, DemoStep] = {}


def register_step(name: str, *, order: int = 100, description: str = "",
                  available: Callable[[], bool] | None = None) -> Callable[[StepFn], StepFn]:
    """Decorator: add a step to the demo (``order`` sorts the table; lower runs first)."""

    def deco(fn: StepFn) -> StepFn:
        STEPS[name] = DemoStep(name=name, fn=fn, order=order, description=description or (fn.__doc__ or "").strip(),
                               available=available)
        return fn

    return deco


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
class DemoResult:
    testbed_root: Path
    work: Path
    rows: list[DemoRow]
    skipped: dict[str, str]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"testbed": str(self.testbed_root), "work": str(self.work), "ok": self.ok,
                "seconds": round(self.seconds, 1), "rows": [asdict(r) for r in self.rows], "skipped": self.skipped}


def default_work_dir(seed: int) -> Path:
    from llmguard.testbed.build import cache_root

    return cache_root() / "demo" / f"seed{seed}"


def run_demo(*, seed: int = 0, testbed_dir: Path | None = None, work: Path | None = None, device: str = "cpu",
             only: list[str] | None = None, progress: Progress | None = None) -> DemoResult:
    """Build or reuse the testbed, then run the registered steps in order."""
    from llmguard.errors import UsageError
    from llmguard.testbed import build

    progress = progress or NullProgress()
    t0 = time.perf_counter()
    steps = load_steps()
    if only:
        unknown = [s for s in only if s not in steps]
        if unknown:
            raise UsageError(f"--steps: unknown step(s) {', '.join(unknown)}; known: {', '.join(steps)}")
        steps = {k: v for k, v in steps.items() if k in only}
    tb = build(testbed_dir, seed=seed, progress=progress)
    work = Path(work) if work is not None else default_work_dir(seed)
    work.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(testbed=tb, work=work, device=device)
    rows: list[DemoRow] = []
    skipped: dict[str, str] = {}
    progress.stage("demo steps", total=len(steps))
    for name, step in steps.items():
        if step.available is not None and not step.available():
            skipped[name] = "verb not available in this build"
            progress.advance(1)
            continue
        ts = time.perf_counter()
        try:
            new = step.fn(ctx)
        except StepFailed as err:
            new = [DemoRow(step=name, model="-", note=str(err), ok=False)]
        except Exception as err:  # noqa: BLE001 - one broken step must not hide the others' rows
            new = [DemoRow(step=name, model="-", note=f"{type(err).__name__}: {err}", ok=False)]
        dt = time.perf_counter() - ts
        for r in new:
            if r.seconds is None:
                r.seconds = round(dt / max(1, len(new)), 1)
        rows.extend(new)
        progress.advance(1)
    progress.close()
    return DemoResult(testbed_root=tb.root, work=work, rows=rows, skipped=skipped, seconds=time.perf_counter() - t0)
