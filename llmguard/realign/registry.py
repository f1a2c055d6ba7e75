"""Registry of realignment methods: the CLI, the demo and the docs find a method here by name.

An entry names the method's options class and its library entry point as ``"module:attribute"``
strings, so reading the registry imports nothing heavy (the CLI builds its commands from it at
import time, and ``import llmguard.cli`` must not load torch). A test checks that every entry has
a CLI verb (``llmguard realign NAME``), a registered ``llmguard demo`` step and a section in its
docs page. To add a method: write its options class and entry point, then add one
``RealignMethod`` to ``_BUILTIN`` below (or call :func:`register_method`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from llmguard.options import Options
from llmguard.progress import Progress
from llmguard.registry import Registry


@dataclass(frozen=True)
class RealignMethod:
    """One realignment method: what it is called, what it does, and where its parts live."""

    name: str
    summary: str
    options: str  # "module:Class", an llmguard.options.Options subclass (importable without torch)
    entry: str  # "module:function", entry(options, progress=None) -> typed result
    training_free: bool = True
    demo_step: str = ""  # the `llmguard demo --steps` name that runs it
    docs: str = "docs/realign.md"  # the page with a `realign NAME` section

    def options_class(self) -> type[Options]:
        return _resolve(self.options)

    def run(self, options: Options, progress: Progress | None = None) -> Any:
        """Run the method's library entry point on validated ``options``."""
        if not isinstance(options, self.options_class()):
            raise TypeError(f"realign {self.name}: expected {self.options_class().__name__}, got {type(options).__name__}")
        return _resolve(self.entry)(options, progress=progress)


_BUILTIN = (
    RealignMethod(
        name="resta",
        summary="θ_F + γ·(θ_A − θ_U): add the safety vector back (training-free baseline)",
        options="llmguard.realign.resta_options:RestaOptions",
        entry="llmguard.realign.resta:run_resta",
        demo_step="realign-resta",
    ),
    RealignMethod(
        name="nlsr",
        summary="neuron-level safety realignment: transplant safety-critical reference units into the least similar modules",
        options="llmguard.realign.nlsr.options:NlsrOptions",
        entry="llmguard.realign.nlsr.method:run_nlsr",
        demo_step="realign-nlsr",
    ),
)

_METHODS: Registry[RealignMethod] = Registry("realign method")


def register_method(method: RealignMethod) -> RealignMethod:
    """Add ``method`` (a second entry under one name is a programming error)."""
    return _METHODS.add(method.name, method)


def get_method(name: str) -> RealignMethod:
    return _METHODS[name]


def methods() -> dict[str, RealignMethod]:
    return dict(_METHODS)


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


for _method in _BUILTIN:
    register_method(_method)
