"""The daemon's TOML configuration: the core's tables, and the raw tables of the plugins.

The core's tables are ``[daemon]``, ``[containers]`` and ``[plugins]``, declared
here with :func:`~supervisor.settings.setting`. Any other table belongs to the
plugin of that name, which declares it the same way; the plugin manager parses
it when it loads the plugin (see :mod:`supervisor.plugins`). ``docs/config.md``
describes every setting, and ``etc/corral.toml`` shows each with its default
(tests hold both to the declarations).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.settings import (
    ConfigError,
    choice,
    parse_table,
    positive_int,
    seconds,
    seconds_or_false,
    setting,
)

DEFAULT_PATH = Path("/etc/corral/corral.toml")

__all__ = ["Config", "ConfigError", "load", "parse"]


@dataclass(frozen=True)
class DaemonSection:
    """``[daemon]``: where the daemon listens and keeps its state."""

    socket: Path = setting(Path("/run/corral/corral.sock"), "control socket path")
    socket_group: str | None = setting(
        None, "group allowed to use the socket (mode 0660); none: root only (0600)"
    )
    depot: Path = setting(Path("/var/lib/corral/depot"), "one directory of state per container")
    max_line_bytes: int = setting(1 << 20, "longest request line", check=positive_int)
    log_level: str = setting(
        "info",
        "least severe log records written",
        check=choice("debug", "info", "warning", "error"),
    )


@dataclass(frozen=True)
class ContainersSection:
    """``[containers]``: defaults for every container."""

    rootfs: Path = setting(
        Path("/var/lib/corral/rootfs/base"),
        "base root filesystem every container's overlay sits on",
    )
    grace_time: float | None = setting(
        300.0,
        "seconds an unreferenced container lives; false: never reaped",
        check=seconds_or_false,
    )
    stop_timeout: float = setting(10.0, "seconds between TERM and KILL on stop", check=seconds)
    output_limit: int = setting(
        10 << 20, "bytes kept per job stream; past it the job is killed", check=positive_int
    )


@dataclass(frozen=True)
class PluginsSection:
    """``[plugins]``: which plugins run."""

    block: tuple[str, ...] = setting(
        (), "plugin names never loaded, built-in or third-party (also CORRAL_BLOCK_PLUGINS=a,b)"
    )


#: The core's tables, by name.
CORE_TABLES: dict[str, type] = {
    "daemon": DaemonSection,
    "containers": ContainersSection,
    "plugins": PluginsSection,
}


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    daemon: DaemonSection = field(default_factory=DaemonSection)
    containers: ContainersSection = field(default_factory=ContainersSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    #: The other tables, raw, by name: each is the table of the plugin of that name.
    tables: dict[str, Any] = field(default_factory=dict)


def parse(text: str) -> Config:
    """Parse TOML text into a :class:`Config`, checking every setting of the core's tables."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    core: dict[str, Any] = {
        name: parse_table(cls, data.pop(name, {}), name) for name, cls in CORE_TABLES.items()
    }
    return Config(**core, tables=data)


def load(path: Path | None) -> Config:
    """Load the config file at *path*; a missing default file means all defaults."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    return parse(text)
