"""Writing one file atomically: a temporary sibling, renamed over the target only when complete.

A crash or Ctrl-C leaves either the old file or none, never a half-written one. (Directories of
tensors go through :class:`llmguard.io.writer.StreamingWriter`, which does the same for a
whole output directory.) The rules every output follows (never an input, parent checked, OUT
locked against a concurrent run, stale temporaries removed, disk full named) live in
:mod:`llmguard.io.output_safety`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from llmguard.io.output_safety import WRITE_ERRNOS, OutputLock, check_parent, disk_error, temp_path


@contextmanager
def atomic_open(path: str | os.PathLike[str], encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of ``path``; renamed to ``path`` when the block ends
    without an error, removed otherwise. Parent directories are created; OUT is locked while
    it is written (re-entrant: a verb holding OUT's lock for its whole run may call this)."""
    target = Path(path)
    check_parent(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    with OutputLock(target):
        try:
            try:
                with tmp.open("w", encoding=encoding) as handle:
                    yield handle
                tmp.replace(target)
            except OSError as err:
                if err.errno in WRITE_ERRNOS or err.filename in (str(tmp), str(target)):
                    raise disk_error(err, target) from None
                raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """``payload`` as indented JSON with a final newline (paths and other objects as strings)."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
