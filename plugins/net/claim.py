"""One daemon per nftables table and per device prefix.

Two daemons configured with the same ``table`` or ``interface_prefix`` would
each remove the other's rules and devices as "leftovers" at start, so the
second one refuses to start instead. A claim is an abstract Unix socket bound
under a name derived from the table or prefix: the kernel refuses a second
bind of the same name, and frees it when the daemon dies, also by ``kill -9``,
leaving no file behind. (Abstract names belong to the network namespace; every
daemon that manages the host's network lives in the host's.)
"""

from __future__ import annotations

import socket

from supervisor.api import ConfigError

_held: dict[str, socket.socket] = {}


def _claim(name: str, what: str) -> None:
    if name in _held:
        return  # this process holds it already (the hook ran twice)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name)
    except OSError:
        sock.close()
        raise ConfigError(f"[net] {what} is in use by another corrald") from None
    _held[name] = sock


def claim(table: str, interface_prefix: str) -> None:
    """Claim *table* and *interface_prefix* for this process, until it exits.

    Raises:
        ConfigError: another live daemon holds one of them.
    """
    _claim(f"corral-net/table/{table}", f"table: nftables table {table!r}")
    _claim(
        f"corral-net/prefix/{interface_prefix}",
        f"interface_prefix: device prefix {interface_prefix!r}",
    )
