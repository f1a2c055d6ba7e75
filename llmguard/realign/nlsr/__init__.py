"""NLSR (Yi et al., AAAI'25): neuron-level safety realignment, training-free.

Stages, one module each: ``reference`` (ExPO-amplified aligned delta), ``scoring``
(safety-critical units: ActSVD / Wanda / magnitude masks), ``similarity`` (masked cosine per
module), ``selection`` (which modules to patch), ``transplant`` (copy masked reference values,
write OUT) and ``patch`` (the reversible record and ``revert``). ``method.run_nlsr`` runs them
on an ``options.NlsrOptions``.

The names below are imported on first use, so ``llmguard.realign.nlsr.options`` (which the CLI
reads at import time) can be imported without torch.
"""

from typing import Any

_EXPORTS = {"NlsrResult": "method", "nlsr": "method", "run_nlsr": "method", "RevertResult": "patch", "revert": "patch",
            "NlsrOptions": "options"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
