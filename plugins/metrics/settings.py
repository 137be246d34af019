"""The ``[metrics]`` table: where the metrics are served (loopback only) or written."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.api import absolute_path, setting

NAME = "metrics"
#: The shortest time between two writes of the textfile: a collection costs tens of
#: milliseconds of the daemon's time with hundreds of containers.
MIN_INTERVAL = 1.0


@dataclass(frozen=True)
class Address:
    """A loopback address and port to serve the metrics on."""

    host: str
    port: int

    @property
    def family(self) -> int:
        """The address family, ``socket.AF_INET`` or ``socket.AF_INET6``."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listen_address(value: Any) -> Address:
    """``"HOST:PORT"`` with HOST an address of 127.0.0.0/8, or ``"[::1]:PORT"``.

    Only loopback: the metrics name every container and tell what runs on the
    host, and the endpoint has no authentication, so it must never be reachable
    from another machine by a slip of the config (``0.0.0.0``, a host name that
    resolves elsewhere). Put a proxy in front to export them further, on purpose.
    """
    example = 'e.g. "127.0.0.1:9464" or "[::1]:9464"'
    if not isinstance(value, str):
        raise ValueError(f"must be a string HOST:PORT ({example}), got {value!r}")
    host, colon, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: an IPv6 address goes in brackets ({example})")
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535 ({example})")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{value!r}: {host!r} is not an IP address (a name could resolve to a "
            f"non-loopback address; {example})"
        ) from None
    loopback = (
        address in ipaddress.IPv4Network("127.0.0.0/8")
        if address.version == 4
        else address == ipaddress.IPv6Address("::1")
    )
    if not loopback:
        raise ValueError(
            f"{value!r}: {host} is not a loopback address (127.0.0.0/8 or ::1); the metrics "
            "are never served beyond the host"
        )
    return Address(str(address), int(port_text))


def textfile_path(value: Any) -> Path:
    """An absolute path ending in ``.prom``, the only files node_exporter's collector reads."""
    path = absolute_path(value)
    if path.suffix != ".prom":
        raise ValueError(
            f"{value!r} does not end in .prom (node_exporter's textfile collector reads only those)"
        )
    return path


def interval(value: Any) -> float:
    """Seconds, at least :data:`MIN_INTERVAL`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < MIN_INTERVAL:
        raise ValueError(f"must be seconds >= {MIN_INTERVAL:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Settings:
    """``[metrics]``: both ways out are off by default."""

    listen: Address | None = setting(
        None,
        "HOST:PORT serving GET /metrics over HTTP, loopback only (127.0.0.0/8 or [::1])",
        check=listen_address,
    )
    textfile: Path | None = setting(
        None, "file (*.prom) rewritten for node_exporter's textfile collector", check=textfile_path
    )
    textfile_interval: float = setting(
        15.0, "seconds between two writes of the textfile (at least 1)", check=interval
    )
