"""Top-level checkpoint verbs: ``inspect`` and ``diff``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the checkpoint verbs to the root app."""
