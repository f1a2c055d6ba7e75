"""Errors a user can cause, each mapped to the documented exit code.

Library code raises these; the CLI turns them into one line on stderr and the exit code,
never a traceback (``-v`` shows it). Keeping the mapping on the exception class means the
CLI layer needs no if-chain over error kinds.
"""

from __future__ import annotations


class LLMGuardError(Exception):
    """Base class: a failure with a message meant for the user and an exit code."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RuntimeFailure(LLMGuardError):
    """Something went wrong that is not the user's input (exit 1)."""

    exit_code = 1


class UsageError(LLMGuardError):
    """Options that contradict each other or an output path that may not be written (exit 2)."""

    exit_code = 2


class InvalidInputError(LLMGuardError):
    """A checkpoint, adapter or data file that cannot be used as given (exit 3)."""

    exit_code = 3


class ResourceError(LLMGuardError):
    """Out of memory, a requested device that is not there, a full disk, or an output another run
    is writing (its lock is held) (exit 4)."""

    exit_code = 4


class GateTripped(LLMGuardError):
    """A ``--fail-above``/``--fail-below``/``--fail-on-detect`` gate was tripped (exit 10), for CI gating."""

    exit_code = 10


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "runtime failure",
    2: "usage error (bad options, output exists without --force, output is, holds or is inside an input)",
    3: "invalid input (bad checkpoint, adapter or data file; output's parent not a directory)",
    4: "resource failure (out of memory, requested device missing, disk full, output locked by another run)",
    10: "a --fail-above / --fail-below / --fail-on-detect gate tripped",
    130: "interrupted (Ctrl-C / SIGTERM); no partial output is left",
}
