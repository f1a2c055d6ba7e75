"""Output conventions shared by every verb (README "Conventions").

- results on stdout (a Rich table, or JSON with ``--json``);
- on stderr: progress bars (a terminal only, off with ``-q``), info lines (off with ``-q``) and
  warnings (always shown: they change how a result reads);
- ``NO_COLOR`` honoured (Rich reads it);
- a user-caused error is one line on stderr plus the documented exit code (and, under ``--json``,
  ``{"error": {"message": ..., "exit_code": ...}}`` on stdout).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from llmguard.errors import LLMGuardError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """Global flags set by the root callback (``-q``, ``-v``)."""

    quiet: bool = False
    verbose: int = 0
    #: ``--json`` was given: an error is then also a JSON document on stdout, so a script that
    #: parses stdout reads ``{"error": {...}}`` instead of an empty string
    json_output: bool = False
    #: a result document is already on stdout (a verb that reports, then fails: ``inspect --scan``
    #: finding NaN): the error then stays on stderr, so stdout remains one document
    json_emitted: bool = False


state = CliState()

#: the width of results written to a pipe or file: Rich would otherwise lay tables out for 80
#: columns, wrapping module names mid-word and cutting intervals; a table only takes the width
#: its content needs, so a wide limit means nothing wraps. ``COLUMNS`` still wins when set.
PIPED_WIDTH = 1000


def _stdout_console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, soft_wrap=True, width=PIPED_WIDTH)
    return console


stdout = _stdout_console()
stderr = Console(stderr=True, highlight=False)


def progress_enabled() -> bool:
    """Progress bars only for a human watching stderr."""
    return not state.quiet and stderr.is_terminal


def info(message: str) -> None:
    """A log line on stderr, dropped with ``-q``."""
    if not state.quiet:
        stderr.print(message, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr (shown even when quiet: it may change how results are read)."""
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def emit_json(payload: Any) -> None:
    """One JSON document on stdout, nothing else (NaN/Inf as ``null``: strict JSON parsers reject them)."""
    state.json_emitted = True
    sys.stdout.write(json.dumps(json_safe(payload), indent=2, default=_json_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def emit_jsonl(record: Any) -> None:
    """One JSON record per line on stdout (for streams)."""
    sys.stdout.write(json.dumps(json_safe(record), default=_json_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (an undefined statistic, e.g. the
    cosine of a zero delta), so the document is valid JSON for every parser."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def fail(message: str, code: int) -> typer.Exit:
    """Print one error line and return the Exit to raise."""
    message = " ".join(message.split())  # one line, whatever a library put in the message
    if state.json_output and not state.json_emitted:
        from llmguard.cli.global_flags import error_document

        sys.stdout.write(error_document(message, code) + "\n")
        sys.stdout.flush()
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def reports_errors(fn: F) -> F:
    """Decorate a command so user-caused errors become one line and an exit code.

    LLMGuardError carries its own exit code; out-of-memory maps to 4; Ctrl-C/SIGTERM to 130;
    anything else is a runtime failure (1). ``-v`` adds the traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LLMGuardError as err:
            _maybe_traceback()
            raise fail(err.message, err.exit_code) from None
        except KeyboardInterrupt:
            from llmguard import interrupts

            interrupts.mark_reported()
            raise fail("interrupted; no partial output was left behind", 130) from None
        except MemoryError:
            _maybe_traceback()
            raise fail("out of memory", 4) from None
        except Exception as err:  # noqa: BLE001 - last line of defence for the user
            from llmguard import interrupts

            if interrupts.received():  # a swallowed Ctrl-C broke a library (e.g. torch without numpy)
                interrupts.mark_reported()
                raise fail("interrupted; no partial output was left behind", 130) from None
            if type(err).__name__ == "OutOfMemoryError":
                _maybe_traceback()
                raise fail(f"out of memory on the device: {err}", 4) from None
            _maybe_traceback(always=state.verbose > 0)
            hint = "" if state.verbose else " (run with -v for the traceback)"
            raise fail(f"internal error: {type(err).__name__}: {err}{hint}", 1) from None

    return wrapper  # type: ignore[return-value]


def _maybe_traceback(always: bool = False) -> None:
    if state.verbose or always:
        traceback.print_exc(file=sys.stderr)
