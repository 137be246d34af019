"""Each container's ``/etc/resolv.conf``: the configured nameservers, or the host's.

The host's file is read at every create, so a container gets the resolver the
host has then. Loopback nameservers (a local cache, systemd-resolved's stub)
are not reachable from a container's own network namespace and are left out;
when none is left, systemd-resolved's list of upstream servers is used if it
exists. IPv6 nameservers are left out too: containers have IPv4 only.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, ip_address
from pathlib import Path

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
#: systemd-resolved's upstream servers, when /etc/resolv.conf names only its stub.
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
#: Lines kept from the host's file besides its usable nameservers.
KEPT_KEYWORDS = ("search", "domain", "options")
HEADER = "# Written by Corral for this container; read-only (see [net] nameservers).\n"


def _usable(server: str) -> bool:
    try:
        address = ip_address(server.split("%")[0])
    except ValueError:
        return False
    return address.version == 4 and not address.is_loopback


def _filtered(text: str) -> tuple[list[str], list[str]]:
    """The usable ``nameserver`` lines of a resolv.conf and the other lines kept."""
    servers, kept = [], []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            if _usable(words[1]):
                servers.append(f"nameserver {words[1]}")
        elif words and words[0] in KEPT_KEYWORDS:
            kept.append(" ".join(words))
    return servers, kept


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def host_resolv_conf(host: Path = HOST_RESOLV_CONF, upstream: Path = RESOLVED_UPSTREAM) -> str:
    """The host's resolver configuration as a container can use it."""
    servers, kept = _filtered(_read(host))
    if not servers:
        servers, upstream_kept = _filtered(_read(upstream))
        kept = kept or upstream_kept
    return HEADER + "".join(f"{line}\n" for line in servers + kept)


def resolv_conf(nameservers: Iterable[IPv4Address] | None) -> str:
    """A container's resolv.conf: *nameservers*, or the host's when None."""
    if nameservers is None:
        return host_resolv_conf()
    return HEADER + "".join(f"nameserver {server}\n" for server in nameservers)
