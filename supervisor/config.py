"""The daemon's TOML configuration, with documented defaults.

Core sections are ``[daemon]``, ``[containers]`` and ``[plugins]``; any other
table belongs to the plugin of that name (e.g. ``[isolation]``) and is handed to
it untouched through :meth:`Config.section`. See ``docs/config.md``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/corral/corral.toml")


@dataclass(frozen=True)
class DaemonSection:
    """``[daemon]``: where the daemon listens and keeps its state."""

    socket: Path = Path("/run/corral/corral.sock")
    #: Group allowed to use the socket (mode 0660); none means root only (0600).
    socket_group: str | None = None
    #: Directory holding one sub-directory of state per container.
    depot: Path = Path("/var/lib/corral/depot")
    #: Longest request line accepted, in bytes.
    max_line_bytes: int = 1 << 20
    log_level: str = "info"


@dataclass(frozen=True)
class ContainersSection:
    """``[containers]``: defaults for every container."""

    #: Base root filesystem every container's overlay sits on.
    rootfs: Path = Path("/var/lib/corral/rootfs/base")
    #: Seconds an unreferenced container lives on; none disables reaping.
    grace_time: float | None = 300.0
    #: Seconds between TERM and KILL when a container is stopped.
    stop_timeout: float = 10.0
    #: Bytes of output kept per job and stream; past it the job is killed.
    output_limit: int = 10 << 20


@dataclass(frozen=True)
class PluginsSection:
    """``[plugins]``: which plugins run."""

    #: Plugin names never registered (built-in or entry point).
    block: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    daemon: DaemonSection = field(default_factory=DaemonSection)
    containers: ContainersSection = field(default_factory=ContainersSection)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    #: Tables not owned by the core, by name, for plugins.
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """Return the raw table ``[name]`` (empty if absent) for a plugin."""
        return self.extra.get(name, {})


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a bad value."""


_PATH_FIELDS = {"socket", "depot", "rootfs"}


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"[{where}] {key}: unknown setting (known: {', '.join(known)})")
        if key in _PATH_FIELDS:
            if not isinstance(value, str) or not value.startswith("/"):
                raise ConfigError(f"[{where}] {key}: must be an absolute path, got {value!r}")
            value = Path(value)
        elif key == "block":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[{where}] block: must be a list of plugin names")
            value = tuple(value)
        elif key == "grace_time" and value is not None and value is not False:
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"[{where}] grace_time: must be seconds >= 0 or false")
        elif key in {"max_line_bytes", "output_limit"}:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"[{where}] {key}: must be a positive integer, got {value!r}")
        elif key == "stop_timeout":
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"[{where}] stop_timeout: must be seconds >= 0")
        if key == "grace_time" and value is False:
            value = None  # TOML has no null: `false` disables reaping
        values[key] = value
    return cls(**values)


def parse(text: str) -> Config:
    """Parse TOML text into a :class:`Config`, checking every core setting."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    core = {"daemon": DaemonSection, "containers": ContainersSection, "plugins": PluginsSection}
    built = {name: _build(cls, data.pop(name, {}), name) for name, cls in core.items()}
    return Config(**built, extra=data)


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
