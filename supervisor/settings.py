"""Typed settings: a config table declared once, as a frozen dataclass, and parsed by the core.

A table is a dataclass whose fields are made with :func:`setting` (default, one
line of documentation, and optionally a check)::

    @dataclass(frozen=True)
    class Settings:
        init: Path = setting(Path("/usr/local/lib/corral/corral-init"), "the container init")
        parent: str = setting("corral", "cgroup holding the containers'", check=cgroup_path)

:func:`parse_table` checks a raw TOML table against it: an unknown key, or a
value of the wrong type, stops the daemon with a message naming the table, the
key and the reason. The field's type says how a value is read (``bool``,
``int``, ``float``, ``str``, ``Path``: an absolute path, ``tuple[str, ...]``: a
list of strings); any other type needs a *check*, a function from the raw value
to the setting's value that raises ``ValueError`` with the reason. A table
whose keys depend on each other checks them in ``__post_init__`` (ValueError,
the message starting with the key).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

S = TypeVar("S")

Check = Callable[[Any], Any]


class ConfigError(ValueError):
    """The configuration is unreadable or holds a bad value; the daemon refuses to start."""


def setting(default: Any, doc: str, *, check: Check | None = None) -> Any:
    """A field of a settings table: its *default*, its *doc* (one line), an optional *check*."""
    metadata = {"doc": doc, "check": check}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared setting, for documentation and its tests."""

    key: str
    default: Any
    doc: str


def declared(cls: type) -> Iterator[Declared]:
    """The settings a table class declares, in order."""
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield Declared(f.name, default, f.metadata.get("doc", ""))


def parse_table(cls: type[S], raw: Any, table: str) -> S:
    """Build *cls* from the raw TOML table ``[table]``.

    Raises:
        ConfigError: naming the table, the key and what is wrong.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{table}]: must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ConfigError(f"[{table}] {', '.join(unknown)}: unknown setting (known: {known})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        check = fields[key].metadata.get("check") or _reader(hints[key])
        try:
            values[key] = check(value)
        except ValueError as exc:
            raise ConfigError(f"[{table}] {key}: {exc}") from None
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"[{table}] {exc}") from None


# -- readers of the plain types and common checks ---------------------------------------


def _reader(kind: Any) -> Check:
    if isinstance(kind, types.UnionType) and type(None) in kind.__args__:
        rest = [a for a in kind.__args__ if a is not type(None)]
        if len(rest) == 1:  # TOML has no null: an optional setting is set, or left out
            kind = rest[0]
    reader = _READERS.get(kind)
    if reader is None:
        raise TypeError(f"a setting of type {kind} needs a check")
    return reader


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def absolute_path(value: Any) -> Path:
    """An absolute path."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return Path(value)


def names(value: Any) -> tuple[str, ...]:
    """A list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, got {value!r}")
    return tuple(value)


_READERS: dict[Any, Check] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    Path: absolute_path,
    tuple[str, ...]: names,
}


def positive_int(value: Any) -> int:
    """A whole number > 0."""
    if _int(value) <= 0:
        raise ValueError(f"must be a positive whole number, got {value!r}")
    return int(value)


def seconds(value: Any) -> float:
    """A number of seconds >= 0."""
    if _float(value) < 0:
        raise ValueError(f"must be seconds >= 0, got {value!r}")
    return float(value)


def seconds_or_false(value: Any) -> float | None:
    """Seconds >= 0, or ``false`` for none (TOML has no null)."""
    if value is False:
        return None
    try:
        return seconds(value)
    except ValueError:
        raise ValueError(f"must be seconds >= 0 or false, got {value!r}") from None


def choice(*allowed: str) -> Check:
    """One of *allowed* strings."""

    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    return check
