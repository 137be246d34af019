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


def _claim(name: str, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name)
    except OSError:
        sock.close()
        raise ConfigError(f"[net] {what} is in use by another corrald") from None
    return sock


def claim(table: str, interface_prefix: str) -> list[socket.socket]:
    """Claim *table* and *interface_prefix* while the returned sockets are open (the
    kernel closes them when the process exits).

    Raises:
        ConfigError: another live daemon holds one of them.
    """
    held = [_claim(f"corral-net/table/{table}", f"table: nftables table {table!r}")]
    try:
        held.append(
            _claim(
                f"corral-net/prefix/{interface_prefix}",
                f"interface_prefix: device prefix {interface_prefix!r}",
            )
        )
    except BaseException:
        held[0].close()
        raise
    return held
