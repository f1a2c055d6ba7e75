"""One frozen options object per verb: every parameter, its default, help text and validation.

A verb's options class is the single place a parameter is declared. The library entry point
takes it, the manifest's ``parameters`` are written from it (:meth:`Options.to_manifest`), a
search point is a copy with some fields replaced (:meth:`Options.replace`, validated again),
and ``llmguard.cli.derive`` generates the Typer command from it, so a flag cannot drift from
the library parameter it sets::

    @dataclass(frozen=True, kw_only=True)
    class RestaOptions(Options):
        verb: ClassVar[str] = "realign resta"
        finetuned: Path = option(help="Fine-tuned checkpoint or LoRA adapter.", short="-f", panel=PANEL_INPUT)
        gamma: float = option(0.5, help="Weight γ of the safety vector θ_A − θ_U.", short="-g", min=0)

        def validate(self) -> None:  # rules that involve several fields
            ...

Construction validates once (``__post_init__``): values are normalised (``str`` → ``Path`` for
path fields, lists → tuples for sequence fields), each field's own rule (``choices``, ``min``,
``max``) is checked, then :meth:`Options.validate` checks the rules between fields. A bad value
raises :class:`llmguard.errors.UsageError` whose one-line message names the flag.

Why stdlib dataclasses and not pydantic: ``import llmguard.cli`` must stay light (shell completion
re-runs the program on every Tab); the rules are few and are better written as plain Python in
``validate``; ``dataclasses.replace`` is exactly a search point; and nothing is added to the
dependencies. This module imports neither torch nor typer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from llmguard.errors import UsageError

PANEL_INPUT = "Inputs"
PANEL_OUTPUT = "Output"
PANEL_METHOD = "Method"
PANEL_PERF = "Performance"
PANEL_DANGER = "Dangerous options"

T = TypeVar("T", bound="Options")
Choices = Union[Sequence[str], Callable[[], Iterable[str]]]


@dataclass(frozen=True)
class OptionSpec:
    """What a field means to a user: help, flag spelling, help panel and the field's own rule.

    ``choices`` may be a callable (e.g. a strategy registry's names), resolved only when a value
    is checked, so declaring the options imports nothing heavy. ``cli_type`` is the command-line
    type when the library accepts more (``max_shard_size``: ``"5GB"`` on the command line, ``int``
    from Python). ``cli=False`` marks library-only fields (in-memory data); ``manifest=False``
    keeps a field out of the manifest's ``parameters``.
    """

    help: str
    flag: str | None = None
    short: str | None = None
    panel: str | None = None
    choices: Choices | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    metavar: str | None = None
    envvar: str | None = None
    cli: bool = True
    cli_type: type | None = None
    positional: bool = False
    hidden: bool = False
    manifest: bool = True
    manifest_key: str | None = None

    def choice_names(self) -> tuple[str, ...]:
        if self.choices is None:
            return ()
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def check(self, flag: str, value: Any) -> None:
        """Raise UsageError when ``value`` breaks this field's own rule (None is not checked)."""
        if value is None:
            return
        if self.choices is not None:
            names = self.choice_names()
            if value not in names:
                raise UsageError(f"{flag} {value!r}: choose {', '.join(names)}")
        if self.min is None and self.max is None:
            if isinstance(value, float) and math.isnan(value):
                # NaN compares false with everything, so no later rule would catch it and it would
                # reach the math (a NaN γ writes an all-NaN result, blamed on the inputs)
                raise UsageError(f"{flag} nan: must be a number")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isnan(value) or not self._in_range(value):
            raise UsageError(f"{flag} {value}: {self.range_text()}")

    def _in_range(self, value: float) -> bool:
        if self.min is not None and not (value > self.min if self.min_exclusive else value >= self.min):
            return False
        return self.max is None or (value < self.max if self.max_exclusive else value <= self.max)

    def range_text(self) -> str:
        low, high = self.min, self.max
        if low is not None and high is not None:
            if self.min_exclusive and self.max_exclusive:
                return f"must lie strictly between {low:g} and {high:g}"
            return f"must lie in {'(' if self.min_exclusive else '['}{low:g}, {high:g}{')' if self.max_exclusive else ']'}"
        if low is not None:
            if low == 0 and not self.min_exclusive:
                return "must be non-negative"
            return f"must be {'greater than' if self.min_exclusive else 'at least'} {low:g}"
        assert high is not None
        return f"must be {'less than' if self.max_exclusive else 'at most'} {high:g}"


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A field of an options class: its default (none: required) and its :class:`OptionSpec`."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"option": OptionSpec(help=help, **spec)})


@dataclass(frozen=True)
class FieldInfo:
    """One option as the CLI generator and the manifest see it."""

    name: str
    type: Any
    spec: OptionSpec
    default: Any  # dataclasses.MISSING when required

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of every verb's options: validated once at construction, immutable afterwards."""

    #: the verb as typed on the command line, e.g. ``"realign resta"`` (the manifest's ``verb``)
    verb: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for info in self.fields():
            value = _normalise(getattr(self, info.name), info.type)
            object.__setattr__(self, info.name, value)
            info.spec.check(info.flag, value)
        self.validate()

    def validate(self) -> None:
        """Rules between fields; override and raise :class:`UsageError` with one clear line."""

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied, validated again (a search point is one of these)."""
        return dataclasses.replace(self, **changes)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``parameters``: every field not marked ``manifest=False``, JSON-ready."""
        return {info.spec.manifest_key or info.name: _jsonable(getattr(self, info.name))
                for info in self.fields() if info.spec.manifest}

    @classmethod
    def fields(cls) -> tuple[FieldInfo, ...]:
        """The options in declaration order, with resolved types."""
        return _fields(cls)

    @classmethod
    def flag(cls, name: str) -> str:
        """The command-line spelling of field ``name`` (for messages)."""
        return next(info.flag for info in cls.fields() if info.name == name)


@functools.cache
def _fields(cls: type[Options]) -> tuple[FieldInfo, ...]:
    if "__dataclass_fields__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must be decorated with @dataclass(frozen=True, kw_only=True)")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(..., help=...)")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        out.append(FieldInfo(f.name, hints[f.name], spec, default))
    return tuple(out)


def optional_inner(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (tp, False). Unions of several types stay."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return tp, False


def sequence_item(tp: Any) -> Any | None:
    """``tuple[X, ...]`` → X (a repeatable option); anything else → None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _normalise(value: Any, tp: Any) -> Any:
    inner, _ = optional_inner(tp)
    if value is None:
        return None
    item = sequence_item(inner)
    if item is not None and isinstance(value, (list, tuple)):
        return tuple(_normalise(v, item) for v in value)
    if inner is Path and isinstance(value, (str, os.PathLike)):
        return Path(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# Fields several verbs share, spelled and documented once. Each call returns a new field, so a
# verb declares e.g. ``device: str = device_option()`` where it wants the flag in its help.

def device_option(default: str = "auto") -> Any:
    return option(default, help="Where the math runs: auto, cpu, cuda or cuda:N.", envvar="LLMGUARD_DEVICE", panel=PANEL_PERF)


def dtype_option() -> Any:
    return option("auto", help="Output dtype: auto (as the input), float32, bfloat16 or float16.", panel=PANEL_OUTPUT)


def max_shard_size_option() -> Any:
    return option("5GB", help="Largest output shard in bytes, e.g. 5GB, 500MB (bytes, not parameters).", panel=PANEL_OUTPUT,
                  cli_type=str)


def force_option() -> Any:
    return option(False, help="Replace OUT if it exists.", panel=PANEL_DANGER, manifest=False)


def allow_pickle_option() -> Any:
    return option(False, help="Accept .bin/.pt pickle checkpoints (loaded with weights_only=True).", panel=PANEL_DANGER,
                  manifest=False)


def base_option() -> Any:
    return option(None, help="Base checkpoint of the adapters (default: the adapter's base_model_name_or_path, when local).",
                  panel=PANEL_INPUT)
