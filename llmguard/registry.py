"""A registry of named strategies (realign methods, NLSR scorers and units): a dict that refuses
a second entry under one name, which would silently replace the first."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name → strategy object, filled at import time by ``add``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = item
        return item
