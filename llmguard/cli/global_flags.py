"""Root flags (``-q``, ``-v``, ``--quiet``, ``--verbose``) accepted anywhere on the command line.

Click only parses a group's options before its sub-command, so ``llmguard realign resta ... -q``
would be a usage error although users put flags at the end. The root group therefore moves every
root flag that stands where the verb would not read it as an option value to the front, before
parsing: it walks the command path, and for the verb it skips the values of options that take
one. ``--`` ends the scan.
"""

from __future__ import annotations

from typing import Any

import click
from typer.core import TyperGroup

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


class RootGroup(TyperGroup):
    """The root command group: root flags may stand before or after the verb."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> Any:
        return super().parse_args(ctx, hoist_root_flags(self, ctx, list(args)))
