"""The one set of rules every output of every verb goes through (files and directories).

An output may never destroy an input, never be left half-written, and never be silently
replaced by a concurrent run. Concretely, before any model is loaded:

- :func:`refuse_overlap`: OUT may not *be* an input, *contain* an input (replacing OUT would
  delete it), or lie *inside* an input directory. Paths are compared after resolving symlinks
  and, when OUT exists, by inode, so a symlink or a hard link to an input is caught too (exit 2).
- :func:`check_parent`: OUT's parent must be a directory (or creatable) and writable; a parent
  that is a file is invalid input (exit 3), found in a second instead of after generation.
- :class:`OutputLock`: an advisory ``fcntl`` lock on ``.OUT.llmguard-lock`` held for the whole
  run; a second run writing the same OUT fails at once with exit 4 (the output is a resource in
  use) instead of both exiting 0 and the later one silently replacing the earlier.
- :func:`remove_stale_temps`: temporaries are named ``.OUT.llmguard-tmp-<pid>`` (and
  ``.OUT.llmguard-old-<pid>`` for the output being replaced); a later run holding the lock
  removes the ones a killed run (SIGKILL, power loss) left behind.
- :func:`disk_error`: an ``OSError`` while writing (disk full, quota, permission) becomes one
  line naming the file (disk full: exit 4), never "internal error".

:mod:`llmguard.io.atomic` (single files), :class:`llmguard.io.writer.StreamingWriter` (tensor
directories), :class:`llmguard.io.staging.StagedDirectory` (directories of several files) and
the judge results file build on these functions.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, LLMGuardError, ResourceError, UsageError

TMP_TAG = "llmguard-tmp"
OLD_TAG = "llmguard-old"
LOCK_TAG = "llmguard-lock"
#: errno values that mean "the disk cannot take the output" rather than a bug
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def temp_path(out: Path, tag: str = TMP_TAG) -> Path:
    """The hidden sibling a run of this process writes OUT's new content to."""
    return out.parent / f".{out.name}.{tag}-{os.getpid()}"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.{LOCK_TAG}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overlap(out: Path, inputs: Iterable[Path], *, file_inputs_are_models: bool = False) -> None:
    """Refuse an OUT that is, contains or lies inside an input (exit 2).

    A data-file input may have OUT next to it. With ``file_inputs_are_models`` a file input is a
    single-file checkpoint whose directory (config, tokenizer) belongs to it, so OUT may not be
    inside that directory either.
    """
    out = Path(out)
    target = out.resolve()
    for item in inputs:
        item = Path(item)
        if not item.exists():
            continue
        src = item.resolve()
        if target == src and src.is_dir():
            raise UsageError(f"{out}: refusing to write into the input directory {item}")
        if target == src or _same_file(out, item):
            raise UsageError(f"{out}: refusing to overwrite the input {item}")
        if target in src.parents:
            raise UsageError(f"{out}: refusing to replace a directory that holds the input {item}")
        src_dir = src if src.is_dir() else (src.parent if file_inputs_are_models else None)
        if src_dir is not None and (target == src_dir or src_dir in target.parents):
            raise UsageError(f"{out}: refusing to write into the input directory {item}")


def check_parent(out: Path) -> None:
    """OUT's parent must be (or become) a writable directory; checked before any work (exit 3)."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        if probe.is_symlink():  # a dangling symlink on the way
            raise InvalidInputError(f"{out}: cannot create the output: {probe} is a broken symlink")
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidInputError(f"{out}: cannot create the output: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{out}: cannot create the output: {probe} is not writable")


def check_output(out: Path, inputs: Iterable[Path] = (), *, force: bool = False, kind: str = "file",
                 file_inputs_are_models: bool = False) -> None:
    """Every up-front refusal for an output of ``kind`` ``file`` or ``dir``: overlap with an input,
    parent, OUT existing without ``--force``, OUT of the other kind."""
    out = Path(out)
    refuse_overlap(out, inputs, file_inputs_are_models=file_inputs_are_models)
    check_parent(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"{out}: already exists (pass --force to replace it)")
        if kind == "dir" and not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory")
        if kind == "file" and out.is_dir():
            raise UsageError(f"{out}: is a directory (the output is a file)")


_TEMP = re.compile(rf"^\.(?P<name>.+)\.(?:{TMP_TAG}|{OLD_TAG})-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path, *, lock_held: bool = False) -> list[Path]:
    """Remove ``.OUT.llmguard-tmp-<pid>`` / ``-old-<pid>`` siblings of killed runs.

    A temp of a dead pid is always stale; with ``lock_held`` (this process holds OUT's lock, so
    no other run is writing OUT) every temp but this process's own is. Returns what was removed.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["name"] != out.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or (not lock_held and _pid_alive(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


#: locks this process holds: resolved lock path -> [holder, users]
_HELD: dict[str, list[Any]] = {}


class OutputLock:
    """An advisory exclusive lock on OUT for the length of a run (``fcntl.flock``, non-blocking).

    The lock file ``.OUT.llmguard-lock`` is removed on release; one left by a killed run holds no
    lock (the kernel drops it with the process) and is reused, then removed, by the next run.
    Acquiring also removes the stale temporaries of earlier runs (:func:`remove_stale_temps`).
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = lock_path(self.out)
        self._fd: int | None = None
        self._shared: OutputLock | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock (exit 4 when another run holds it). Re-entrant within one process: a
        verb locks OUT for its whole run and the writer it calls locks it again."""
        import fcntl

        if self._fd is not None or self._shared is not None:
            return self
        key = str(self.path.resolve())
        holder = _HELD.get(key)
        if holder is not None:
            holder[1] += 1
            self._shared = holder[0]
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ResourceError(f"{self.out}: another llmguard run is writing this output "
                                    f"(lock {self.path.name} is held); wait for it or choose another output") from None
            # the holder before us may have unlinked the file between our open and our lock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                _HELD[key] = [self, 1]
                os.write(fd, f"{os.getpid()}\n".encode())
                remove_stale_temps(self.out, lock_held=True)
                return self
            os.close(fd)
        raise ResourceError(f"{self.out}: could not lock the output (lock {self.path.name} keeps changing)")

    def release(self) -> None:
        """Drop this user's hold; the lock goes (and its file is removed) with the last user."""
        owner = self._shared if self._shared is not None else self
        self._shared = None
        if owner._fd is None:
            return
        key = str(owner.path.resolve())
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[key]
        try:
            owner.path.unlink(missing_ok=True)
        finally:
            os.close(owner._fd)
            owner._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - best effort, e.g. a writer never entered
        try:
            self.release()
        except Exception:
            pass


def disk_error(err: OSError, path: Path) -> LLMGuardError:
    """An ``OSError`` raised while writing ``path`` as the error a user can act on."""
    reason = err.strerror or str(err)
    if err.errno in WRITE_ERRNOS:
        return ResourceError(f"{path}: {reason} while writing the output; nothing was written (free space and rerun)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
        return InvalidInputError(f"{path}: cannot write the output: {reason}")
    return ResourceError(f"{path}: cannot write the output: {reason}")
