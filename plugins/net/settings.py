"""The ``[net]`` table of the daemon config, checked once at start (see README.md here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from plugins.net.pool import SUBNET_PREFIXLEN
from supervisor.config import ConfigError

NAME = "net"
#: Linux interface names hold at most 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: Container ids are written in hex after ``<prefix>v``; 5 digits cover ``MAX_IDS``.
MAX_IDS = 1 << 20
ID_DIGITS = 5
PREFIX_MAX = IFNAME_MAX - 1 - ID_DIGITS
WORD_RE = re.compile(r"^[A-Za-z0-9_-]+$")

KNOWN = (
    "table",
    "pool",
    "interface_prefix",
    "port_range",
    "quarantine",
    "bridges",
    "allow_networks",
    "allow_host_access",
)


@dataclass(frozen=True)
class Settings:
    """The network plugin's settings, with their defaults."""

    #: nftables table (family ``inet``) owned by this daemon; nothing else may use it.
    table: str = "corral"
    #: Network cut into one /30 per container.
    pool: IPv4Network = IPv4Network("10.254.0.0/22")
    #: Start of every host-side device name (veth ends, bridges); unique to this daemon.
    interface_prefix: str = "crl"
    #: Host ports handed out by ``net in`` when none is asked for.
    port_range: tuple[int, int] = (61001, 65000)
    #: Seconds a released address is not handed out again.
    quarantine: float = 60.0
    #: Shared bridges: name -> subnet (the bridge itself takes the first host address).
    bridges: dict[str, IPv4Network] = field(default_factory=dict)
    #: Destinations every container may reach without ``net out``.
    allow_networks: tuple[IPv4Network, ...] = ()
    #: Whether containers may reach the host's own services (its addresses).
    allow_host_access: bool = False

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


def _network(value: Any, where: str) -> IPv4Network:
    if not isinstance(value, str):
        raise ConfigError(f'[{NAME}] {where}: must be a string like "10.254.0.0/22", got {value!r}')
    try:
        return IPv4Network(value)
    except ValueError as exc:
        raise ConfigError(f"[{NAME}] {where}: {value!r} is not an IPv4 network ({exc})") from None


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
        raise ConfigError(
            f'[{NAME}] port_range: must be [FIRST, LAST] or "FIRST-LAST" with '
            f"1 <= FIRST <= LAST <= 65535, got {value!r}"
        )
    return parts[0], parts[1]


def parse(table: dict[str, Any]) -> Settings:
    """Check the raw ``[net]`` table and build :class:`Settings`.

    Raises:
        ConfigError: naming the setting and what is wrong with it.
    """
    unknown = set(table) - set(KNOWN)
    if unknown:
        raise ConfigError(
            f"[{NAME}] {', '.join(sorted(unknown))}: unknown setting (known: {', '.join(KNOWN)})"
        )
    values: dict[str, Any] = {}
    if "table" in table:
        name = table["table"]
        if not isinstance(name, str) or not WORD_RE.match(name) or len(name) > 64:
            raise ConfigError(f"[{NAME}] table: {name!r} is not 1-64 letters, digits, '_' or '-'")
        values["table"] = name
    if "interface_prefix" in table:
        prefix = table["interface_prefix"]
        if not isinstance(prefix, str) or not WORD_RE.match(prefix) or len(prefix) > PREFIX_MAX:
            raise ConfigError(
                f"[{NAME}] interface_prefix: {prefix!r} is not 1-{PREFIX_MAX} letters, digits, '_' or '-'"
            )
        values["interface_prefix"] = prefix
    if "pool" in table:
        pool = _network(table["pool"], "pool")
        if pool.prefixlen > SUBNET_PREFIXLEN:
            raise ConfigError(f"[{NAME}] pool: {pool} is smaller than one /{SUBNET_PREFIXLEN}")
        values["pool"] = pool
    if "port_range" in table:
        values["port_range"] = _port_range(table["port_range"])
    if "quarantine" in table:
        q = table["quarantine"]
        if isinstance(q, bool) or not isinstance(q, int | float) or q < 0:
            raise ConfigError(f"[{NAME}] quarantine: must be seconds >= 0, got {q!r}")
        values["quarantine"] = float(q)
    if "allow_host_access" in table:
        if not isinstance(table["allow_host_access"], bool):
            raise ConfigError(f"[{NAME}] allow_host_access: must be true or false")
        values["allow_host_access"] = table["allow_host_access"]
    if "allow_networks" in table:
        nets = table["allow_networks"]
        if not isinstance(nets, list):
            raise ConfigError(f"[{NAME}] allow_networks: must be a list of networks")
        values["allow_networks"] = tuple(
            _network(n, f"allow_networks[{i}]") for i, n in enumerate(nets)
        )
    settings = Settings(**values)
    bridges = table.get("bridges", {})
    if not isinstance(bridges, dict):
        raise ConfigError(f'[{NAME}] bridges: must be a table NAME = "SUBNET"')
    parsed: dict[str, IPv4Network] = {}
    for name, subnet in bridges.items():
        device = settings.bridge_device(name)
        if not WORD_RE.match(name) or len(device) > IFNAME_MAX:
            raise ConfigError(
                f"[{NAME}] bridges.{name}: the name must be letters, digits, '_' or '-' and "
                f"its device {device!r} at most {IFNAME_MAX} characters"
            )
        network = _network(subnet, f"bridges.{name}")
        if network.num_addresses < 4:
            raise ConfigError(f"[{NAME}] bridges.{name}: {network} has no room for containers")
        parsed[name] = network
    _check_overlaps(settings.pool, parsed)
    return Settings(**{**values, "bridges": parsed})


def _check_overlaps(pool: IPv4Network, bridges: dict[str, IPv4Network]) -> None:
    named = [("pool", pool)] + [(f"bridges.{n}", net) for n, net in bridges.items()]
    for i, (a_name, a) in enumerate(named):
        for b_name, b in named[i + 1 :]:
            if a.overlaps(b):
                raise ConfigError(f"[{NAME}] {b_name}: {b} overlaps {a_name} {a}")
