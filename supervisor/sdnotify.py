"""systemd's readiness protocol (``sd_notify(3)``) in a few lines of the standard library.

A ``Type=notify`` service (``etc/corrald.service``) finds the address of its
service manager's socket in ``$NOTIFY_SOCKET`` and tells it how it is doing in
datagrams of ``KEY=VALUE`` lines: ``READY=1`` once it serves, so that
``systemctl start`` returns only when clients can connect, and ``STOPPING=1``
when it begins to shut down. The address is a path, or starts with ``@`` for a
socket in the abstract namespace. Where the variable is unset (``corraldctl``,
the tests' private daemons) nothing is sent.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger()

ENV = "NOTIFY_SOCKET"
#: Seconds a send may wait for room in the manager's queue (it reads at once; a hung one
#: must not hang the daemon).
SEND_TIMEOUT = 5.0


def notify(state: str) -> bool:
    """Send *state* (say ``"READY=1"``) to the service manager, if there is one.

    A failure is logged, not raised: the daemon serves all the same (systemd then
    reports the start as timed out, which says more than a daemon that died).

    Returns:
        Whether the datagram was sent.
    """
    address = os.environ.get(ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # systemd also knows vsock: addresses (for virtual machines); a host daemon never sees them.
        log.warning("service manager address not supported", notify_socket=address)
        return False
    try:
        # Sent from the event loop: one short datagram, twice in a daemon's life.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify the service manager", state=state, error=str(exc))
        return False
    return True
