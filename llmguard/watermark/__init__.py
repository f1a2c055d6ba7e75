"""Watermark schemes (registry), exact statistics, generation processors and the detection driver.

Heavy imports (torch, transformers) happen in the submodules that need them:
``schemes``/``stats``/``detect`` need numpy only until a permutation profile computes a green list.
"""

from __future__ import annotations

from llmguard.watermark.schemes import DEFAULT_PROFILE, REGISTRY, Scheme, SchemeParams, build_scheme

__all__ = ["DEFAULT_PROFILE", "REGISTRY", "Scheme", "SchemeParams", "build_scheme"]
