"""Watermark schemes (registry), exact statistics, generation processors and the detection driver.

Heavy imports (torch, transformers) happen in the submodules that need them:
``schemes``/``stats``/``detect`` need numpy only until a permutation profile computes a green list.

``options`` imports neither: the CLI derives the verbs' flags from it at import time, so the names
below are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PROFILE", "REGISTRY", "Scheme", "SchemeParams", "build_scheme"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from llmguard.watermark import schemes

    return getattr(schemes, name)
