"""The root command group: root flags anywhere, one-line usage errors, help without placeholders.

Root flags (``-q``, ``-v``, ``--quiet``, ``--verbose``) are accepted anywhere on the command line.

Click only parses a group's options before its sub-command, so ``llmguard realign resta ... -q``
would be a usage error although users put flags at the end. The root group therefore moves every
root flag that stands where the verb would not read it as an option value to the front, before
parsing: it walks the command path, and for the verb it skips the values of options that take
one. ``--`` ends the scan.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import typer
import typer.core
from typer.core import TyperGroup, TyperOption

# Typer >= 0.24 vendors click; its exceptions are the ones a command line raises
_click: Any = getattr(typer.core, "_click", click)

ROOT_FLAGS = {"-q", "--quiet", "-v", "--verbose"}


def _is_root_flag(token: str) -> bool:
    return token in ROOT_FLAGS or (token.startswith("-v") and set(token[1:]) == {"v"})  # -vv, -vvv


def _value_options(command: Any) -> set[str]:
    """Option spellings of ``command`` that consume the next token."""
    names: set[str] = set()
    for param in command.params:  # duck-typed: Typer's classes need not subclass click's
        if getattr(param, "param_type_name", "") == "option" and not param.is_flag and not param.count:
            names.update(param.opts)
    return names


def hoist_root_flags(group: Any, ctx: click.Context, args: list[str]) -> list[str]:
    """``args`` with the root flags that follow the verb path moved to the front."""
    hoisted: list[str] = []
    rest: list[str] = []
    command: Any = group
    takes_value = _value_options(group)
    skip_next = False
    for i, token in enumerate(args):
        if token == "--":
            rest.extend(args[i:])
            break
        if skip_next:
            skip_next = False
            rest.append(token)
            continue
        if _is_root_flag(token) and command is not group:
            hoisted.append(token)
            continue
        rest.append(token)
        if token.startswith("-"):
            skip_next = token in takes_value  # "--opt=value" carries its own value
            continue
        if hasattr(command, "list_commands"):
            sub = command.get_command(ctx, token)
            if sub is not None:
                command = sub
                takes_value = _value_options(sub)
    return hoisted + rest


def _flag_type_label(self: TyperOption, ctx: click.Context) -> str | None:
    """Typer labels on/off flags ``<bool>`` and counters ``<int>`` in the help, which reads as if they
    took a value (``-v 2`` is then "No such command '2'"); flags and counters get no label."""
    if self.is_flag or self.count:
        return None
    return _typer_type_label(self, ctx)


_typer_type_label = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type_label  # type: ignore[method-assign]


def usage_error_line(err: Any) -> str:
    """A click usage error as the project's one line: ``error: MESSAGE (see 'llmguard VERB -h')``."""
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
    return f"error: {message}{hint}"


def wants_json(args: list[str]) -> bool:
    """``--json`` before any ``--``: errors then also come as a JSON document on stdout."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def error_document(message: str, code: int) -> str:
    """The JSON document printed on stdout for a failure under ``--json``."""
    return json.dumps({"error": {"message": message, "exit_code": code}}, indent=2)


class RootGroup(TyperGroup):
    """The root command group: root flags may stand before or after the verb; a bare ``llmguard``
    prints the help and exits 0; a usage error (unknown flag, missing value) is one line on stderr
    with exit 2, not Rich's boxed panel."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> Any:
        if not args and ctx.parent is None:
            args = ["--help"]
        return super().parse_args(ctx, hoist_root_flags(self, ctx, list(args)))

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError:
            code = 2  # a group without its verb: the help was printed
        except _click.exceptions.ClickException as err:
            line = usage_error_line(err)
            if wants_json(argv):
                sys.stdout.write(error_document(line.removeprefix("error: "), err.exit_code) + "\n")
            sys.stderr.write(line + "\n")
            code = err.exit_code
        except (_click.exceptions.Abort, typer.Abort):
            sys.stderr.write("error: aborted\n")
            code = 1
        sys.exit(code if isinstance(code, int) else 0)
