"""A tiny progress-reporting protocol so library code can report progress without Rich.

Library functions take an optional :class:`Progress`; the CLI passes one that draws a Rich
bar on stderr, Python users get :class:`NullProgress` (silent) by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    """Receives stage starts and per-item advances from long-running library calls."""

    def stage(self, name: str, total: int | None = None) -> None:
        """A new stage begins (``total`` work items, or unknown)."""

    def advance(self, n: int = 1) -> None:
        """``n`` work items of the current stage are done."""

    def log(self, message: str) -> None:
        """A line that stays on the screen above the bars (a step started or ended)."""

    def note(self, text: str) -> None:
        """What the current stage is doing right now (shown after its name, replaced by the next note)."""

    def close(self) -> None:
        """No more stages."""


class NullProgress:
    """The silent default."""

    def stage(self, name: str, total: int | None = None) -> None:  # noqa: D102
        pass

    def advance(self, n: int = 1) -> None:  # noqa: D102
        pass

    def log(self, message: str) -> None:  # noqa: D102
        pass

    def note(self, text: str) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


class Warnings(list):
    """Warnings of one library call, kept in order and handed to ``on_warning`` as they happen
    (the CLI prints them at once, so a later error still follows them on stderr)."""

    def __init__(self, on_warning: "Callable[[str], None] | None" = None) -> None:
        super().__init__()
        self.on_warning = on_warning

    def __call__(self, message: str) -> None:
        self.append(message)
        if self.on_warning is not None:
            self.on_warning(message)
