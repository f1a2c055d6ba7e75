"""Weight-unit masks kept on disk as packed bits until the transplant needs them.

A weight-unit mask has one flag per weight of every module. Selection needs every module's
similarity before any transplant, so all masks must outlive the calibration pass; held as
``torch.bool`` they would take as much memory as an int8 copy of the model (6.5 GB for a 7B
model). Spilled as packed bits next to the output they take 1/16 of a bf16 checkpoint on disk
and nothing in memory, which keeps the run's memory independent of model size.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class StoredMask:
    """One module's boolean mask, packed to bits in ``path``."""

    path: Path
    shape: tuple[int, ...]

    def load(self) -> torch.Tensor:
        count = int(np.prod(self.shape))
        bits = np.unpackbits(np.fromfile(self.path, dtype=np.uint8), count=count)
        return torch.from_numpy(bits.astype(bool)).reshape(self.shape)


class MaskStore:
    """A private directory of packed masks; ``close`` removes it (also on errors)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=False)
        self._count = 0

    @classmethod
    def beside(cls, output: Path) -> "MaskStore":
        """A store next to ``output``: same file system as the result, cleaned up by ``close``."""
        return cls(output.parent / f".{output.name}.llmguard-masks-{os.getpid()}")

    def put(self, mask: torch.Tensor) -> StoredMask:
        path = self.directory / f"{self._count:06d}.bits"
        self._count += 1
        np.packbits(mask.detach().to("cpu", torch.bool).numpy().reshape(-1)).tofile(path)
        return StoredMask(path, tuple(mask.shape))

    def discard(self, mask: object) -> None:
        """Remove one stored mask early (a ``--search`` point's shrunk masks); anything else is ignored."""
        if isinstance(mask, StoredMask) and mask.path.parent == self.directory:
            mask.path.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "MaskStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
