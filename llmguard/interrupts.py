"""Ctrl-C and SIGTERM: one clean abort, exit 130, one line, whatever moment they arrive.

Installed first thing by the entry point (stdlib only, before the CLI and its libraries are
imported), so an interrupt during ``import torch`` is handled like any other instead of printing
an import traceback. The first SIGINT/SIGTERM raises :class:`KeyboardInterrupt` (the verbs'
context managers remove their temporaries, the CLI prints "interrupted" and exits 130). While
that cleanup runs, a second Ctrl-C is ignored: interrupting the cleanup itself is what left
temporaries and printed "Exception ignored in ..." tracebacks. A third one quits at once
(``os._exit(130)``) for a cleanup that hangs; the next run removes what it left
(:mod:`llmguard.io.output_safety`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

EXIT_INTERRUPTED = 130
_count = 0
_reported = False


def received() -> bool:
    """Whether a SIGINT/SIGTERM arrived. Some C extensions swallow the KeyboardInterrupt raised
    inside them (torch's ``import`` catches the failure of its numpy import and goes on without
    numpy), so the CLI asks this instead of trusting that the exception reached it."""
    return _count > 0


def mark_reported() -> None:
    """The CLI printed the interrupt's line already."""
    global _reported
    _reported = True


def reported() -> bool:
    return _reported


def _handler(signum: int, frame: Any) -> None:
    global _count
    _count += 1
    if _count == 1:
        raise KeyboardInterrupt
    if _count >= 3:
        try:
            sys.stderr.write("error: interrupted again; quitting without cleanup\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_INTERRUPTED)


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_handler` (main thread only, as signal requires)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def interrupted_exit() -> "NoReturn":  # noqa: F821 - the string annotation keeps typing out of the import
    """The one line and the exit code of an interrupt caught outside the verbs (e.g. at import)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing left to clean; no second traceback
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed pipe must not turn into a traceback
        pass
    if not _reported:
        sys.stderr.write("error: interrupted; no partial output was left behind\n")
        sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)  # no interpreter shutdown: a thread joined there printed "Exception ignored"
