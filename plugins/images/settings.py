"""The ``[images]`` table: how registries are reached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.api import absolute_path, names, setting


def ca_files(value: Any) -> dict[str, Path]:
    """A table of registry (``host:port``) to the absolute path of a CA bundle file."""
    if not isinstance(value, dict):
        raise ValueError(f'must be a table of "REGISTRY" = "/path/ca.pem", got {value!r}')
    return {str(registry): absolute_path(path) for registry, path in value.items()}


@dataclass(frozen=True)
class Settings:
    """``[images]``."""

    plain_http: tuple[str, ...] = setting(
        (),
        "registries (host:port) spoken to over plain HTTP instead of HTTPS, e.g. a local one",
        check=names,
    )
    ca_files: dict[str, Path] = setting(
        {},
        "extra CA bundle per registry (a table REGISTRY = PATH), trusted besides the system's",
        check=ca_files,
    )
    credentials: Path | None = setting(
        None,
        'Docker-style config.json with registry logins ({"auths": {REGISTRY: {"auth": ...}}})',
        check=absolute_path,
    )
