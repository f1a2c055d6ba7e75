"""What changes a testbed's bytes, pinned where it can be and recorded where it cannot.

A tiny model trained on the CPU is only reproducible when everything that changes its
floating-point path is fixed: the seed (fixed by the recipe), the thread count (one forward and
backward of the testbed model already differs between one and two OpenMP threads, and a few
hundred training steps amplify that into a different model), the torch build and the CPU's
vector path (torch dispatches its CPU kernels by instruction set: AVX2, AVX512, ...). The builds
therefore

- run with ONE torch thread (:func:`one_thread`), whatever the caller's ``OMP_NUM_THREADS``, so
  ``llmguard demo``, the pytest suite under xdist and a user's Python call build the same bytes;
- key their cache directory by :func:`build_key` (torch version, CPU capability and CPU model),
  so a cache built by another torch, another vector path or another CPU is never reused as if it
  were this one (two CPUs with one torch and one vector path were measured to differ);
- record :func:`environment` (library versions, CPU, threads, the project's git revision) in
  their marker file, as every manifest does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The torch thread count every testbed build runs with.
BUILD_THREADS = 1


def cache_root() -> Path:
    """``$LLMGUARD_CACHE`` (default ``~/.cache/llmguard``): where every testbed artefact lives."""
    return Path(os.environ.get("LLMGUARD_CACHE") or Path.home() / ".cache" / "llmguard").expanduser()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: unchanged), restoring the caller's count after."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """Run the block with :data:`BUILD_THREADS` torch threads, restoring the caller's count after."""
    return torch_threads(BUILD_THREADS)


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels dispatch on (e.g. ``AVX512``, ``AVX2``)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # very old torch: fall back to the machine name
        return platform.machine()


def cpu_name() -> str:
    """The CPU model as a short directory-name slug (``amd-epyc``, ``intel-xeon-processor``).

    Why it is in the key: two CPUs with the same torch build and the same vector path do not give
    the same testbed. Measured (docs/testbed.md): testbed v3 seed 0 built with torch 2.13.0 on
    AVX512 on an Intel Xeon and on an AMD EPYC gave different NLSR results (LoRA defaults
    9.7 % / 98.4 % against 8.3 % / 96.9 % on TEST), so a cache copied between them must not be
    reused.
    """
    import re

    from llmguard.provenance import cpu_model

    name = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", " ", cpu_model().lower())
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
    return slug if len(slug) <= 24 else f"{slug[:17].rstrip('-')}-{recipe_hash(slug)[:6]}"


def build_key() -> str:
    """A short name for what changes a build's bytes besides the recipe:
    ``torch2.13.0-avx512-amd-epyc`` (torch version, CPU vector path, CPU model).

    The recipe (version, seed, hyper-parameters) is keyed separately by each builder; this part
    keeps builds of different torch versions, CPU vector paths or CPU models apart in one cache.
    """
    import torch

    version = torch.__version__.split("+")[0]
    return f"torch{version}-{cpu_capability().lower()}-{cpu_name()}"


def environment() -> dict[str, Any]:
    """The run's environment (``llmguard.provenance``) plus the build's CPU path, threads and key."""
    from llmguard.provenance import environment as runtime

    return {**runtime(), "cpu_capability": cpu_capability(), "build_threads": BUILD_THREADS, "build_key": build_key()}


def recipe_hash(*parts: str) -> str:
    """12 hex digits of a SHA-256 over ``parts``: a cache name for a recipe."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]
