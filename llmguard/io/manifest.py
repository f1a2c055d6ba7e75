"""``llmguard.json``: what produced an artefact, from what, with which parameters, at what cost."""

from __future__ import annotations

import hashlib
import platform
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llmguard import __version__
from llmguard.provenance import environment

MANIFEST_NAME = "llmguard.json"
FULL_HASH_LIMIT = 64 * 1024 * 1024  # files up to this size are hashed whole


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    On Linux this is ``VmHWM`` from /proc: ``getrusage``'s ``ru_maxrss`` survives ``exec`` and
    so reports the *parent's* peak when that was larger (a test that built big tensors and
    then ran the CLI would measure itself, not the CLI).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def peak_vram_bytes() -> int | None:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated())
    except Exception:  # pragma: no cover - no CUDA here
        return None
    return None


def fingerprint(path: Path) -> dict[str, Any]:
    """Identify one input file cheaply but reliably.

    Small files (configs, adapters, data) get a full SHA-256. Large safetensors shards get a
    SHA-256 of their header (names, dtypes, shapes, offsets) plus the size: enough to tell
    checkpoints apart without re-reading gigabytes; the method is recorded with the hash.
    """
    size = path.stat().st_size
    digest = hashlib.sha256()
    if size <= FULL_HASH_LIMIT:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"path": str(path), "bytes": size, "sha256": digest.hexdigest(), "hash": "full"}
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        digest.update(head)
        digest.update(handle.read(min(length, FULL_HASH_LIMIT)))
    digest.update(str(size).encode())
    return {"path": str(path), "bytes": size, "sha256": digest.hexdigest(), "hash": "header+size"}


def fingerprint_input(path: Path) -> list[dict[str, Any]]:
    """Fingerprints of every file of an input (a directory or one file)."""
    if path.is_file():
        return [fingerprint(path)]
    return [fingerprint(p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]


@dataclass
class Manifest:
    """Collects parameters, inputs, per-stage timings and peak memory of one run."""

    verb: str
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add_input(self, role: str, path: Path) -> None:
        self.inputs[role] = fingerprint_input(path)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage; the yielded dict can carry stage-specific numbers."""
        record: dict[str, Any] = {"name": name}
        t0 = time.perf_counter()
        try:
            yield record
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 4)
            record["peak_rss_bytes"] = peak_rss_bytes()
            vram = peak_vram_bytes()
            if vram is not None:
                record["peak_vram_bytes"] = vram
            self.stages.append(record)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "llmguard",
            "version": __version__,
            "verb": self.verb,
            "created_unix": round(self.started, 3),
            "parameters": self.parameters,
            "inputs": self.inputs,
            "stages": self.stages,
            "total_seconds": round(sum(s["seconds"] for s in self.stages), 4),
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_vram_bytes": peak_vram_bytes(),
            "python": platform.python_version(),
            "environment": environment(),
            **self.extra,
        }
