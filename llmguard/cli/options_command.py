"""Typer commands derived from frozen options dataclasses (one flag per field, help from the field).

A verb's options are a frozen dataclass whose fields carry ``metadata={"help": ..., "panel": ...}``
(optionally ``flag``, ``aliases``, ``envvar``; ``nested=True`` for a field that is itself an options
group). :func:`options_command` turns one or more such classes into a Typer command whose
parameters are exactly those fields, with their defaults and help, and hands the parsed values
back as the options objects. The flags, defaults and help are therefore written once, in the
library. (A bridge until the project's shared options framework lands: the metadata keys are the
ones it uses.)
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Annotated, Any, Optional

import typer


def _annotation(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return Optional[args[0]]
    return tp


def _leaf_fields(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, type, field) of every flag of ``cls``, nested groups flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.metadata.get("nested"):
            out.extend(_leaf_fields(hints[f.name]))
        elif "help" in f.metadata:
            out.append((f.name, hints[f.name], f))
    return out


def _parameter(name: str, tp: Any, f: Any) -> inspect.Parameter:
    meta = f.metadata
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    names = [flag, *meta.get("aliases", ())]
    kwargs: dict[str, Any] = {"help": meta["help"], "rich_help_panel": meta.get("panel")}
    if meta.get("envvar"):
        kwargs["envvar"] = meta["envvar"]
    if f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        default = inspect.Parameter.empty
    annotated = Annotated[_annotation(tp), typer.Option(*names, **kwargs)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotated)


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from flat ``values`` (nested groups built from the same dict)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("nested"):
            kwargs[f.name] = build(hints[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def options_command(*groups: type, extra: list[inspect.Parameter] = (), doc: str = "") -> Callable[[Callable], Callable]:
    """Decorator: ``fn(values: dict)`` becomes a Typer command with one flag per field of ``groups``.

    ``values`` maps field names to the parsed values; build each group with :func:`build`.
    ``extra`` adds CLI-only parameters (``--json``).
    """
    params: list[inspect.Parameter] = []
    seen: set[str] = set()
    for cls in groups:
        assert is_dataclass(cls)
        for name, tp, f in _leaf_fields(cls):
            if name in seen:
                raise ValueError(f"option {name!r} is declared twice")
            seen.add(name)
            params.append(_parameter(name, tp, f))
    params.extend(extra)
    required = [p for p in params if p.default is inspect.Parameter.empty]
    optional = [p for p in params if p.default is not inspect.Parameter.empty]

    def deco(fn: Callable[[dict[str, Any]], None]) -> Callable:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            return fn(kwargs)

        command.__signature__ = inspect.Signature(required + optional)  # type: ignore[attr-defined]
        command.__doc__ = doc or fn.__doc__
        del command.__wrapped__
        return command

    return deco
