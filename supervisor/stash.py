"""Typed per-container storage for plugins (pytest's ``Stash`` is the model).

A plugin declares a key once, at module level, and keeps what it holds for a
container under that key in the container's :class:`Stash`::

    GROUP = StashKey[ContainerCgroups]()
    container.stash[GROUP] = group

Keys are objects, so two plugins never collide, and the type checker knows the
type of each value. A stash lives in memory with its container and is gone
with it; what must survive a daemon restart goes in ``plugin_state`` instead.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key of a :class:`Stash` whose values are of type ``T``."""

    __slots__ = ()


class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._items[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        """The value of *key*; KeyError if none was set."""
        return cast(T, self._items[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value of *key*, or *default* if none was set."""
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value of *key*, set to *default* first if none was set."""
        if key not in self._items:
            self._items[key] = default
        return self[key]

    def pop(self, key: StashKey[T], default: D) -> T | D:
        """Remove and return the value of *key*, or *default* if none was set."""
        return cast(T | D, self._items.pop(key, default))

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._items[key]

    def __contains__(self, key: StashKey[T]) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
