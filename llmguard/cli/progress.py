"""Rich implementation of :class:`llmguard.progress.Progress` for the CLI (stderr only)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress as RichProgress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from llmguard.cli.output import progress_enabled, stderr
from llmguard.progress import NullProgress, Progress


class RichStageProgress:
    """One bar per stage, on stderr."""

    def __init__(self) -> None:
        self._bar = RichProgress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=False,
        )
        self._bar.start()
        self._task: int | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        if self._task is not None:
            task = self._bar.tasks[self._task]
            if task.total is not None:
                self._bar.update(self._task, completed=task.total)
        self._task = self._bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def note(self, text: str) -> None:
        """Show ``text`` (e.g. the current loss) after the current stage's name."""
        if self._task is not None:
            name = self._bar.tasks[self._task].description.split(" · ")[0]
            self._bar.update(self._task, description=f"{name} · {text}")

    def close(self) -> None:
        self.stage("done", 0)
        self._bar.stop()


def make_progress() -> Progress:
    """A Rich progress on a TTY unless ``-q``; silent otherwise."""
    return RichStageProgress() if progress_enabled() else NullProgress()
