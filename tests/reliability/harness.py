"""Run one corpus case in-process and check what a hostile user's run must never do.

For every case: the documented exit code; on failure exactly one ``error:`` line on stderr naming
the thing (file, tensor, line or field), no traceback; no output, temporary or lock left behind
(a failing run adds no file to the case directory; a succeeding one only its declared outputs);
and every file that existed before the run byte-identical afterwards (SHA-256 of the whole case
directory, inputs and any previous output alike).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Outcome:
    """What one case did, and which of the checks it failed."""

    case: str
    verb: str
    expected: int
    exit_code: int
    error_line: str
    wrong_exit: bool = False
    traceback: bool = False
    not_one_line: bool = False
    missing_needle: bool = False
    leftovers: list[str] = field(default_factory=list)
    changed_inputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.wrong_exit or self.traceback or self.not_one_line or self.missing_needle or self.leftovers or self.changed_inputs)

    def problems(self) -> str:
        parts = []
        if self.wrong_exit:
            parts.append(f"exit {self.exit_code} (expected {self.expected})")
        if self.traceback:
            parts.append("traceback")
        if self.not_one_line:
            parts.append("not one error line")
        if self.missing_needle:
            parts.append("error does not name the thing")
        if self.leftovers:
            parts.append(f"left {self.leftovers}")
        if self.changed_inputs:
            parts.append(f"changed {self.changed_inputs}")
        return f"{self.case} [{self.verb}]: " + "; ".join(parts) + f" | {self.error_line}"


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and link target) under ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        for d in dirnames:
            if not os.listdir(os.path.join(dirpath, d)):
                out[str((Path(dirpath) / d).relative_to(root)) + "/"] = "empty-dir"
    return out


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """The CLI in this process (the verbs' own code paths, minus the interpreter start)."""
    from typer.testing import CliRunner

    from llmguard.cli.app import app
    from llmguard.cli.output import state

    runner = CliRunner()
    result = runner.invoke(app, argv, env={"NO_COLOR": "1", "COLUMNS": "400"}, catch_exceptions=True)
    state.quiet, state.verbose = False, 0
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stdout, stderr


def run_case(name: str, verb: str, root: Path, argv: list[str], expected: int, needles: tuple[str, ...],
             outputs: tuple[str, ...] = (), allowed_changes: tuple[str, ...] = (),
             hold: Callable[[], Callable[[], None]] | None = None) -> Outcome:
    """Run ``argv`` inside ``root`` (the case directory, every input copied there) and check it.

    ``outputs``: paths (relative to ``root``) a successful run may create or replace.
    ``hold``: starts a situation (e.g. another process's lock) and returns how to end it.
    """
    before = snapshot(root)
    release = hold() if hold is not None else None
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code, _stdout, stderr = invoke(argv)
    finally:
        os.chdir(cwd)
        if release is not None:
            release()
    after = snapshot(root)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    error_line = lines[0] if lines else ""
    outcome = Outcome(name, verb, expected, code, error_line[:300])
    outcome.stdout = _stdout  # type: ignore[attr-defined]
    outcome.wrong_exit = code != expected
    outcome.traceback = "Traceback" in stderr or "internal error" in stderr
    if expected != 0:
        outcome.not_one_line = len(lines) != 1 or not error_line.startswith("error:")
        outcome.missing_needle = not all(n.lower() in error_line.lower() for n in needles)
    allowed = tuple(outputs) if code == 0 else ()
    def declared(rel: str) -> bool:
        return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in allowed + tuple(allowed_changes))
    outcome.leftovers = sorted(rel for rel in after if rel not in before and not declared(rel))
    outcome.changed_inputs = sorted(rel for rel, digest in before.items() if after.get(rel) != digest and not declared(rel))
    return outcome


def copy_input(src: Path, dst: Path) -> Path:
    """A private copy of a testbed input (a case may corrupt it; the testbed stays intact)."""
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return dst
