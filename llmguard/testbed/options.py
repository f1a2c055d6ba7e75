"""Options of ``testbed build`` (importable without torch: the CLI derives its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from llmguard.options import PANEL_DANGER, PANEL_OUTPUT, Options, option


@dataclass(frozen=True, kw_only=True)
class TestbedBuildOptions(Options):
    """Where the testbed is built, its seed, and whether a complete one is rebuilt."""

    __test__ = False  # not a pytest test class, whatever its name
    verb: ClassVar[str] = "testbed build"

    out: Path | None = option(None, help="Directory to build into (default: $LLMGUARD_CACHE/testbed/v<version>-seed<N>).", short="-o",
                              panel=PANEL_OUTPUT)
    seed: int = option(0, help="Seed of the data and the training runs.")
    force: bool = option(False, help="Rebuild even if a complete testbed is there.", panel=PANEL_DANGER)


@dataclass(frozen=True, kw_only=True)
class TestbedWatermarkOptions(Options):
    """The watermark testbed's seed, a rebuild, and where the printed attack commands write."""

    __test__ = False
    verb: ClassVar[str] = "testbed watermark"

    seed: int = option(0, help="Seed of the teacher language, data and training runs.")
    force: bool = option(False, help="Rebuild even if a complete build is there.", panel=PANEL_DANGER)
    commands: Path | None = option(None, help="Print the scrub / spoof / weak-spoof command lines (outputs under this "
                                   "directory) instead of the table.", panel=PANEL_OUTPUT)
