"""An output directory built in a hidden sibling and renamed into place only when complete.

Verbs whose output is a directory of several files (a dataset, a trained model, a report) build it
in ``.OUT.llmguard-partial`` next to OUT. OUT itself appears only once everything is written, so
a failed or interrupted run never leaves a complete-looking OUT. With ``keep_on_error`` the
partial directory survives a failure, which is what ``--resume`` continues from; without it, it
is removed. The refusals (OUT is, holds or is inside an input; parent not a directory; OUT
exists without ``--force``) and the lock against a concurrent run come from
:mod:`llmguard.io.output_safety`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmguard.errors import UsageError
from llmguard.io.output_safety import OLD_TAG, OutputLock, check_output, temp_path


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
        self._lock = OutputLock(self.out)

    def check(self) -> None:
        """Refuse before any work is done (exit 2).

        Model directories follow :func:`check_output_path` (OUT may not be inside them); a data
        file may sit next to OUT, but OUT may not be the file or a directory holding it (replacing
        OUT would delete the input).
        """
        check_output(self.out, self.inputs, force=self.force, kind="dir")
        if self.resume and not self.path.is_dir():
            raise UsageError(f"--resume: no unfinished run of {self.out} to resume ({self.path} does not exist)")

    def __enter__(self) -> "StagedDirectory":
        self.check()
        self._lock.acquire()
        try:  # __exit__ does not run when __enter__ raises: release the lock here
            if self.path.exists() and not self.resume:
                shutil.rmtree(self.path)
            self.resumed = self.path.is_dir()
            self.path.mkdir(parents=True, exist_ok=True)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                if not self.keep_on_error:
                    shutil.rmtree(self.path, ignore_errors=True)
                return
            old = None
            if self.out.exists() or self.out.is_symlink():  # --force: replace only now the new one is complete
                old = temp_path(self.out, OLD_TAG)
                self.out.rename(old)
            self.path.replace(self.out)
            if old is not None:
                if old.is_symlink() or not old.is_dir():
                    old.unlink()
                else:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            self._lock.release()
