"""The contrastive rule's modes and parameter checks (no torch: the CLI validates options with it)."""

from __future__ import annotations

import math

from llmguard.errors import UsageError

#: ``scrub`` removes the inherited watermark, ``spoof`` amplifies it.
MODES = ("scrub", "spoof")


def check_rule(mode: str, alpha: float, beta: float) -> None:
    """Refuse a rule that does not mean anything (exit 2)."""
    if mode not in MODES:
        raise UsageError(f"contrastive mode must be scrub or spoof, got {mode!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise UsageError(f"--alpha must be in (0, 1), got {alpha}")
    if not (isinstance(beta, (int, float)) and beta > 0.0 and math.isfinite(beta)):
        raise UsageError(f"--beta must be positive and finite, got {beta}")
