"""Writing one file atomically: a temporary sibling, renamed over the target only when complete.

A crash or Ctrl-C leaves either the old file or none, never a half-written one. (Directories of
tensors go through :class:`llmguard.io.writer.StreamingWriter`, which does the same for a
whole output directory.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of ``path``; renamed to ``path`` when the block ends
    without an error, removed otherwise. Parent directories are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.llmguard-tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding=encoding) as handle:
            yield handle
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """``payload`` as indented JSON with a final newline (paths and other objects as strings)."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
