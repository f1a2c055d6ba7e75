"""Rich implementation of :class:`llmguard.progress.Progress` for the CLI (stderr only).

One live display owns stderr for the whole command: the current stage's bar (spinner, name and
what it is doing now, bar, done/total, elapsed, rate and time left), and above it the lines
that must stay (``log``: a demo step started or ended, with its time). A stage without a known
total shows a pulsing bar and its elapsed time, so the screen never looks frozen on a finished
bar while work goes on; when it ends its bar is removed (the caller logs the end). Library progress bars (transformers' ``Loading weights``) are switched
off by the root command unless ``-v``, so this display is the only one.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from llmguard.cli.output import progress_enabled, stderr
from llmguard.progress import NullProgress, Progress


class RateEtaColumn(ProgressColumn):
    """``12.3 it/s, 0:41 left`` for a stage with a total; ``1.2 it/s`` without; blank before the
    first item (no rate to show yet)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        rate = f"{speed:.1f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it"
        if task.total is None or task.finished:
            return Text(rate, style="progress.data.speed")
        left = int(task.time_remaining or 0)
        return Text(f"{rate}, {left // 60}:{left % 60:02d} left", style="progress.remaining")


class RichStageProgress:
    """One bar for the current stage, on stderr; finished stages leave their final bar behind."""

    def __init__(self, console: Any = None) -> None:
        # elapsed time first: on a narrow terminal Rich shortens the last columns, and what must
        # stay visible is that time moves on and what is running
        self._bar = RichProgress(
            SpinnerColumn(),
            TimeElapsedColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            RateEtaColumn(),
            console=console or stderr,
            transient=False,
        )
        self._bar.start()
        self._running = True
        self._task: int | None = None
        self._names: dict[int, str] = {}

    def _finish_current(self) -> None:
        if self._task is None:
            return
        task = next(t for t in self._bar.tasks if t.id == self._task)  # ids are not list positions once one is removed
        if task.total is None:  # a stage of unknown length (a demo step): its end is a log line, not a 0/0 bar
            self._bar.remove_task(self._task)
        else:
            self._bar.update(self._task, completed=task.total, description=self._names[self._task])
            self._bar.stop_task(self._task)
        self._task = None

    def stage(self, name: str, total: int | None = None) -> None:
        self._finish_current()
        if not self._running:  # a callee closed it (the testbed build does); a new stage reopens it
            self._bar.start()
            self._running = True
        self._task = self._bar.add_task(name, total=total)
        self._names[self._task] = name

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def note(self, text: str) -> None:
        """Show ``text`` (the current loss, the command running) after the current stage's name."""
        if self._task is not None:
            self._bar.update(self._task, description=f"{self._names[self._task]} · {text}" if text else self._names[self._task])
            self._bar.refresh()  # a note changes rarely (once per command): show it at once

    def log(self, message: str) -> None:
        """A line above the bars that stays (Rich keeps the live display below it)."""
        self._bar.console.print(message, highlight=False, soft_wrap=True)

    def close(self) -> None:
        self._finish_current()
        if self._running:
            self._bar.stop()
            self._running = False


def make_progress(*, pinned: bool = False) -> Progress:
    """A Rich progress on a TTY unless ``-q``; silent otherwise.

    ``pinned``: the display writes to the stderr of this moment (not to whatever ``sys.stderr``
    is later), so a caller that captures ``sys.stderr`` around an in-process command (the demo)
    keeps its display on the terminal."""
    if not progress_enabled():
        return NullProgress()
    if not pinned:
        return RichStageProgress()
    from rich.console import Console

    real = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
    return RichStageProgress(Console(file=real, highlight=False, force_terminal=stderr.is_terminal,
                                     no_color=stderr.no_color))
