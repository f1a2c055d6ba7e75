"""What ran: library versions, CPU, thread count, devices and the project's git revision.

Recorded in every manifest (``llmguard.json``) and in every testbed marker, so a number can be
traced to the software and machine that produced it. Cheap (no torch import unless torch is
already loaded: a tokenizer-only verb stays light), cached per process.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Distributions whose versions change numbers.
LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "datasets", "accelerate", "numpy")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The project's git revision when llmguard runs from a checkout (``-dirty`` with local
    changes to tracked files); None when installed from a wheel."""
    here = Path(__file__).resolve().parent
    if not (here.parent / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        if rev.returncode != 0 or not rev.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_threads() -> int | None:
    """torch's intra-op thread count, if torch is already imported (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return int(torch.get_num_threads())
    except Exception:  # noqa: BLE001 - a half-imported torch must not break a manifest
        return None


_DEVICES: set[str] = set()


def note_device(device: object) -> None:
    """Remember a device this run computes on (``llmguard.io.device.resolve_device`` calls it)."""
    _DEVICES.add(str(device))


def accelerator() -> dict[str, Any] | None:
    """CUDA build and GPU names, when torch is loaded (never imports it) and sees a GPU."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return {"cuda_available": False, "cuda_build": torch.version.cuda}
        return {"cuda_available": True, "cuda_build": torch.version.cuda,
                "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    except Exception:  # noqa: BLE001 - a broken driver must not break a manifest
        return None


def environment() -> dict[str, Any]:
    """Versions, CPU, threads, revision, and the devices of this run."""
    from llmguard import __version__

    return {
        "llmguard": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        **{name: _version(name) for name in LIBRARIES},
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "devices": sorted(_DEVICES),
        "accelerator": accelerator(),
    }
