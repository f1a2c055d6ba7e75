"""An output directory built in a hidden sibling and renamed into place only when complete.

Verbs whose output is a directory of several files (a dataset, a trained model, a report) build it
in ``.OUT.llmguard-partial`` next to OUT. OUT itself appears only once everything is written, so
a failed or interrupted run never leaves a complete-looking OUT. With ``keep_on_error`` the
partial directory survives a failure, which is what ``--resume`` continues from; without it, it
is removed. The usual refusals (OUT exists without ``--force``, OUT inside an input) come from
:func:`llmguard.io.writer.check_output_path`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmguard.errors import UsageError
from llmguard.io.writer import check_output_path


class StagedDirectory:
    """``with StagedDirectory(out, inputs, force=..., resume=...) as stage: write into stage.path``."""

    def __init__(self, out: str | Path, inputs: Iterable[Path] = (), *, force: bool = False, resume: bool = False,
                 keep_on_error: bool = False) -> None:
        self.out = Path(out)
        self.inputs = [Path(p) for p in inputs]
        self.force = force
        self.resume = resume
        self.keep_on_error = keep_on_error
        self.path = self.out.parent / f".{self.out.name}.llmguard-partial"
        self.resumed = False

    def check(self) -> None:
        """Refuse before any work is done (exit 2).

        Model directories follow :func:`check_output_path` (OUT may not be inside them); a data
        file may sit next to OUT, but OUT may not be the file or a directory holding it (replacing
        OUT would delete the input).
        """
        target = self.out.resolve()
        for item in self.inputs:
            if item.is_file():
                src = item.resolve()
                if target == src or target in src.parents:
                    raise UsageError(f"{self.out}: refusing to overwrite the input {item}")
        check_output_path(self.out, [p for p in self.inputs if p.is_dir()], self.force)
        if self.resume and not self.path.is_dir():
            raise UsageError(f"--resume: no unfinished run of {self.out} to resume ({self.path} does not exist)")

    def __enter__(self) -> "StagedDirectory":
        self.check()
        if self.path.exists() and not self.resume:
            shutil.rmtree(self.path)
        self.resumed = self.path.is_dir()
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            if not self.keep_on_error:
                shutil.rmtree(self.path, ignore_errors=True)
            return
        if self.out.exists():  # --force: replace only now that the new output is complete
            shutil.rmtree(self.out)
        self.path.replace(self.out)
