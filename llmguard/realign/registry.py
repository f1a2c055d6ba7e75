"""Registry of realignment methods, so the CLI, the demo and the benchmarks find them by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RealignMethod:
    name: str
    summary: str
    training_free: bool
    run: Callable[..., object]


_METHODS: dict[str, RealignMethod] = {}


def register_method(name: str, summary: str, *, training_free: bool = True) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator: register ``run`` under ``name`` (duplicates are a programming error)."""

    def decorate(run: Callable[..., object]) -> Callable[..., object]:
        if name in _METHODS:
            raise ValueError(f"realign method {name!r} registered twice")
        _METHODS[name] = RealignMethod(name, summary, training_free, run)
        return run

    return decorate


def get_method(name: str) -> RealignMethod:
    _load_builtin()
    return _METHODS[name]


def methods() -> dict[str, RealignMethod]:
    _load_builtin()
    return dict(_METHODS)


def _load_builtin() -> None:
    import llmguard.realign.nlsr  # noqa: F401
    import llmguard.realign.resta  # noqa: F401
    import llmguard.realign.somf  # noqa: F401
