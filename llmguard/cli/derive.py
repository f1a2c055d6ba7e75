"""Typer commands generated from an options class, so a flag cannot drift from its parameter.

Every field of a verb's :class:`llmguard.options.Options` becomes one command-line parameter:
its type (``Path``, ``int``, ``float``, ``str``, ``bool`` flags, ``X | None``, and ``tuple[X, ...]``
as a repeatable option), default (none: required), help text, help panel, short flag, metavar and
environment variable all come from the field. The command parses, builds the options object
(validated once; a bad value is a one-line usage error, exit 2) and hands it to the handler,
which calls the library and prints::

    @verb_command(app, "resta", RestaOptions, panel="Training-free baselines", extra={"json_output": JSON_FLAG})
    def resta_command(options: RestaOptions, *, json_output: bool) -> None:
        \"\"\"RESTA: ... (the handler's docstring is the command's help)\"\"\"
        result = run_resta(options, progress=make_progress())
        ...

``extra`` holds presentation-only flags (``--json``, ``--top``): they change what is printed,
not what the library computes, so they are not options of the verb and not in the manifest.
Each is ``(Annotated[type, typer.Option(...)], default)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Optional

import typer

from llmguard.cli.output import reports_errors, state
from llmguard.options import PANEL_DANGER, FieldInfo, Options, optional_inner, sequence_item

#: a presentation flag: (Annotated[type, typer.Option(...)], default)
Extra = tuple[Any, Any]

JSON_FLAG: Extra = (
    Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.", rich_help_panel="Output")],
    False,
)


def cli_annotation(info: FieldInfo) -> Any:
    """``Annotated[type, typer.Option(...)]`` (or ``typer.Argument``) for one options field."""
    spec = info.spec
    inner, optional = optional_inner(info.type)
    item = sequence_item(inner)
    if spec.cli_type is not None:
        base: Any = spec.cli_type
    elif item is not None:
        base = list[item]  # type: ignore[valid-type]
        optional = True  # an empty repeatable option arrives as None
    else:
        base = inner
    if optional or (info.default is None):
        base = Optional[base]
    settings = {key: value for key, value in {
        "help": spec.help, "rich_help_panel": spec.panel, "metavar": spec.metavar,
        "envvar": spec.envvar, "hidden": spec.hidden or None,
    }.items() if value is not None}
    if spec.positional:
        return Annotated[base, typer.Argument(**settings)]
    names = [info.flag] + ([spec.short] if spec.short else [])
    return Annotated[base, typer.Option(*names, **settings)]


def cli_default(info: FieldInfo) -> Any:
    """The signature default: none when required; an empty repeatable option defaults to None."""
    if info.required:
        return inspect.Parameter.empty
    if sequence_item(optional_inner(info.type)[0]) is not None and info.spec.cli_type is None:
        return None if not info.default else list(info.default)
    return info.default


def cli_fields(options_cls: type[Options]) -> list[FieldInfo]:
    return [info for info in options_cls.fields() if info.spec.cli]


def build_options(options_cls: type[Options], values: Mapping[str, Any]) -> Options:
    """The options object from parsed command-line values (None for an empty repeatable option
    means "the default")."""
    fields = {info.name: info for info in cli_fields(options_cls)}
    kwargs = {}
    for name, value in values.items():
        info = fields[name]
        if value is None and sequence_item(optional_inner(info.type)[0]) is not None and not info.required:
            continue
        kwargs[name] = value
    return options_cls(**kwargs)


def derive_command(options_cls: type[Options], handler: Callable[..., None], extra: Mapping[str, Extra] | None = None) -> Callable[..., None]:
    """A Typer callback whose parameters are ``options_cls``'s fields plus ``extra``.

    The callback builds the options (validated) and calls ``handler(options, **extra_values)``;
    errors from either become one line and the exit code (``reports_errors``).
    """
    extra = dict(extra or {})
    fields = cli_fields(options_cls)
    clash = {info.name for info in fields} & set(extra)
    if clash:
        raise TypeError(f"{options_cls.__name__}: extra flags {sorted(clash)} shadow option fields")
    # presentation flags follow the options, before the "Dangerous options" (which stay last in the help)
    ordered = [info for info in fields if info.spec.panel != PANEL_DANGER]
    danger = [info for info in fields if info.spec.panel == PANEL_DANGER]
    params = [inspect.Parameter(info.name, inspect.Parameter.KEYWORD_ONLY, annotation=cli_annotation(info), default=cli_default(info))
              for info in ordered]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
               for name, (annotation, default) in extra.items()]
    params += [inspect.Parameter(info.name, inspect.Parameter.KEYWORD_ONLY, annotation=cli_annotation(info), default=cli_default(info))
               for info in danger]

    def command(**values: Any) -> None:
        shown = {name: values.pop(name) for name in extra}
        state.json_output = bool(shown.get("json_output") or shown.get("json_out"))
        state.json_emitted = False
        handler(build_options(options_cls, values), **shown)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = getattr(handler, "__name__", "command")
    command.__qualname__ = command.__name__
    command.__doc__ = handler.__doc__
    command.__module__ = getattr(handler, "__module__", __name__)
    command.options_class = options_cls  # type: ignore[attr-defined] - read by the drift test
    return reports_errors(command)


def verb_command(app: typer.Typer, name: str, options_cls: type[Options], *, panel: str | None = None,
                 extra: Mapping[str, Extra] | None = None, help: str | None = None,
                 epilog: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: register ``handler(options, **extra)`` as command ``name`` of ``app``.

    ``help`` replaces the handler's docstring as the command's help; ``epilog`` follows the
    options. The handler is returned unchanged, so it stays callable with an options object.
    """

    def decorate(handler: Callable[..., None]) -> Callable[..., None]:
        app.command(name, rich_help_panel=panel, help=help, epilog=epilog)(derive_command(options_cls, handler, extra))
        return handler

    return decorate
