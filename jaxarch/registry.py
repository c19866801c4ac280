"""A name -> factory registry, so models, datasets and tasks are found by name and never by an if/elif chain."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; `register` is a decorator and `get` names the nearest match on a typo."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} registry: {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ValueError(
                f"{self.kind} registry: unknown {self.kind} {name!r}{hint}; "
                f"expected one of {sorted(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
