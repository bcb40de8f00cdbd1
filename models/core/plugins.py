"""One registration mechanism for every kind of plug-in (PEFT methods, students, compression
steps, quantizers, hardware targets, packaged models and datasets, task families, architectures).

A plug-in registers itself where it is defined (``@REGISTRY.register("name")`` or
``REGISTRY.add("name", obj)``); registering a name twice is an error, and looking up an unknown
name says which names exist. Registries are filled by importing the plug-in modules: each kind's
package imports its built-in modules in its ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DuplicatePlugin(ValueError):
    """A plug-in name was registered twice (two modules claiming one name)."""


class UnknownPlugin(KeyError):
    """A name that no plug-in of this kind registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named plug-ins of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if not name:
            raise ValueError(f"{self.kind}: a plug-in needs a non-empty name")
        if name in self._items:
            raise DuplicatePlugin(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self._items) or "none"
            raise UnknownPlugin(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"


def load_plugins(package: str, path: list[str], *, folders_only: bool = False) -> list[str]:
    """Import every module (or, with ``folders_only``, every subpackage) of ``package`` (its
    ``__path__``), so that the plug-ins they define register themselves: a new plug-in is one file
    (or folder) in the package, with no list to edit. Names starting with '_' are helpers, not
    plug-ins. Call it at the end of the package's ``__init__``. Returns the names imported."""
    import importlib
    import pkgutil

    found = [m for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
    names = sorted(m.name for m in found if m.ispkg or not folders_only)
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
