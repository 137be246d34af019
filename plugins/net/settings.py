"""The ``[net]`` table of the daemon config, declared once, checked at start (see README.md here)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from plugins.net.pool import SUBNET_PREFIXLEN
from supervisor.api import setting

NAME = "net"
#: Linux interface names hold at most 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: Container ids are written in hex after ``<prefix>v``; 5 digits cover ``MAX_IDS``.
MAX_IDS = 1 << 20
ID_DIGITS = 5
PREFIX_MAX = IFNAME_MAX - 1 - ID_DIGITS
WORD_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: IPv4's minimum MTU; a veth's maximum.
MIN_MTU, MAX_MTU = 68, 65535
#: The resolver reads at most three (glibc's MAXNS).
MAX_NAMESERVERS = 3


def _network(value: Any) -> IPv4Network:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "10.254.0.0/22", got {value!r}')
    try:
        return IPv4Network(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 network ({exc})") from None


def _word(longest: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not WORD_RE.match(value) or len(value) > longest:
            raise ValueError(f"{value!r} is not 1-{longest} letters, digits, '_' or '-'")
        return value

    return check


def _pool(value: Any) -> IPv4Network:
    pool = _network(value)
    if pool.prefixlen > SUBNET_PREFIXLEN:
        raise ValueError(f"{pool} is smaller than one /{SUBNET_PREFIXLEN}")
    return pool


def _port_range(value: Any) -> tuple[int, int]:
    if isinstance(value, str) and "-" in value:
        parts: list[Any] = value.split("-", 1)
        try:
            parts = [int(p) for p in parts]
        except ValueError:
            parts = []
    elif isinstance(value, list):
        parts = value
    else:
        parts = []
    if (
        len(parts) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts)
        or not 1 <= parts[0] <= parts[1] <= 65535
    ):
        raise ValueError(
            f'must be [FIRST, LAST] or "FIRST-LAST" with 1 <= FIRST <= LAST <= 65535, got {value!r}'
        )
    return parts[0], parts[1]


def _mtu(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MTU <= value <= MAX_MTU:
        raise ValueError(f"must be bytes from {MIN_MTU} to {MAX_MTU}, got {value!r}")
    return value


def _nameservers(value: Any) -> tuple[IPv4Address, ...]:
    if not isinstance(value, list) or len(value) > MAX_NAMESERVERS:
        raise ValueError(f"must be a list of at most {MAX_NAMESERVERS} IPv4 addresses")
    try:
        return tuple(IPv4Address(v) for v in value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _quarantine(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be seconds >= 0, got {value!r}")
    return float(value)


def _networks(value: Any) -> tuple[IPv4Network, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of networks")
    networks = []
    for i, item in enumerate(value):
        try:
            networks.append(_network(item))
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
    return tuple(networks)


def _bridges(value: Any) -> dict[str, IPv4Network]:
    if not isinstance(value, dict):
        raise ValueError('must be a table NAME = "SUBNET"')
    parsed = {}
    for name, subnet in value.items():
        try:
            network = _network(subnet)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if network.num_addresses < 4:
            raise ValueError(f"{name}: {network} has no room for containers")
        parsed[name] = network
    return parsed


@dataclass(frozen=True)
class Settings:
    """``[net]``: the network plugin's settings, with their defaults."""

    table: str = setting(
        "corral", "nftables table (family inet) of this daemon, unique to it", check=_word(64)
    )
    pool: IPv4Network = setting(
        IPv4Network("10.254.0.0/22"), "network cut into one /30 per container", check=_pool
    )
    interface_prefix: str = setting(
        "crl",
        "start of every host-side device name, unique to this daemon",
        check=_word(PREFIX_MAX),
    )
    port_range: tuple[int, int] = setting(
        (61001, 65000), "host ports net in hands out when none is asked for", check=_port_range
    )
    quarantine: float = setting(
        60.0, "seconds a released address is not handed out again", check=_quarantine
    )
    bridges: dict[str, IPv4Network] = setting(
        {}, "shared bridges, NAME = SUBNET: containers on one talk directly", check=_bridges
    )
    bridge_networks: tuple[IPv4Network, ...] = setting(
        (IPv4Network("192.168.0.0/16"),),
        "networks in which a create's address makes a shared bridge for its subnet on first use",
        check=_networks,
    )
    allow_networks: tuple[IPv4Network, ...] = setting(
        (), "destinations every container may reach without net out", check=_networks
    )
    allow_host_access: bool = setting(False, "whether containers may reach the host's own services")
    mtu: int = setting(1500, "MTU of every container's veth (both ends) and bridge", check=_mtu)
    nameservers: tuple[IPv4Address, ...] | None = setting(
        None,
        "nameservers of each container's /etc/resolv.conf; absent: the host's, without loopback ones",
        check=_nameservers,
    )

    def __post_init__(self) -> None:
        for name in self.bridges:
            device = self.bridge_device(name)
            if not WORD_RE.match(name) or len(device) > IFNAME_MAX:
                raise ValueError(
                    f"bridges.{name}: the name must be letters, digits, '_' or '-' and "
                    f"its device {device!r} at most {IFNAME_MAX} characters"
                )
        named = [("pool", self.pool)] + [(f"bridges.{n}", net) for n, net in self.bridges.items()]
        for i, (a_name, a) in enumerate(named):
            for b_name, b in named[i + 1 :]:
                if a.overlaps(b):
                    raise ValueError(f"{b_name}: {b} overlaps {a_name} {a}")

    def on_demand_name(self, subnet: IPv4Network) -> str:
        """The name of the bridge made on demand for *subnet* when the create names none:
        the hex digits of its address the prefix covers, then the prefix length
        (``c0a84d24`` for 192.168.77.0/24, ``c0a816`` for 192.168.0.0/16)."""
        digits = -(-subnet.prefixlen // 4)
        return f"{int(subnet.network_address):08x}"[:digits] + str(subnet.prefixlen)

    def veth_name(self, ident: int) -> str:
        """Host-side name of the veth of the container with id *ident*."""
        return f"{self.interface_prefix}v{ident:x}"

    def bridge_device(self, name: str) -> str:
        """Device name of the configured bridge *name*."""
        return f"{self.interface_prefix}b{name}"

    @property
    def wildcard(self) -> str:
        """nftables interface-name pattern matching every device of this daemon."""
        return f"{self.interface_prefix}*"
