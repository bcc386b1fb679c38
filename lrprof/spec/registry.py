"""Named builders, looked up by the name a user types (timm's model registry, in small)."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from lrprof.spec.errors import SpecError


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Entries by name; an unknown name is a SpecError naming `param` and the known names."""

    def __init__(self, param: str, what: str) -> None:
        self.param, self.what = param, what
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        if entry.name in self._entries:
            raise ValueError(f"{self.what} {entry.name!r} registered twice")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise SpecError(self.param, f"one of {', '.join(sorted(self._entries))}", name)
        return self._entries[name]

    def remove(self, name: str) -> T | None:
        return self._entries.pop(name, None)

    def all(self) -> list[T]:
        """By name."""
        return [self._entries[k] for k in sorted(self._entries)]

    def in_order(self) -> list[T]:
        """In the order they were registered."""
        return list(self._entries.values())
