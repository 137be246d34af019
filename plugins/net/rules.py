"""The nftables ruleset of a daemon, as JSON commands: pure builders, no system calls.

One table (family ``inet``) holds everything::

    prerouting  nat dstnat    `net in` DNATs for traffic from other namespaces
    output      nat -100      the same DNATs for traffic of the host itself (also to 127.0.0.1)
    postrouting nat srcnat    masquerade of the pool and bridge subnets leaving by a
                              non-Corral device, and of 127/8 sources sent to a container
    forward     filter 0      established traffic, published ports, bridge-local traffic,
                              then `egress` for traffic from containers; the rest of
                              Corral's traffic is dropped. Other traffic is never matched
                              (policy accept), so the host's own forwarding is untouched.
    input       filter 0      nothing from a container to 127/8 but replies; containers
                              may not reach the host's own services (unless allow_host_access)
    egress      regular       allow_networks, and one rule per `net out`

Static rules carry the comment :data:`BASE_TAG`; a container's rules carry its
handle, which is how destroy and restart find them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from plugins.net.settings import Settings
from supervisor.api import InvalidRequest

Command = dict[str, Any]
Expr = dict[str, Any]

FAMILY = "inet"
BASE_TAG = "corral:base"
#: Start of the tag of the rules of a bridge made on demand, before its device name.
BRIDGE_TAG = "corral:bridge:"
PROTOCOLS = ("tcp", "udp", "icmp", "all")
LOOPBACK = IPv4Network("127.0.0.0/8")
#: Start of the kernel log line of a logged ``net out`` rule, before the handle.
LOG_PREFIX = "corral-out "

#: Base chains: name -> (type, hook, priority).
BASE_CHAINS: dict[str, tuple[str, str, int]] = {
    "prerouting": ("nat", "prerouting", -100),
    "output": ("nat", "output", -100),
    "postrouting": ("nat", "postrouting", 100),
    "forward": ("filter", "forward", 0),
    "input": ("filter", "input", 0),
}
EGRESS_CHAIN = "egress"


@dataclass(frozen=True)
class Egress:
    """One ``net out`` permission: destination, optional port range, protocol, ICMP type
    and code, and whether new connections are logged."""

    #: The destination network; with :attr:`last`, the /32 of the range's first address.
    network: IPv4Network
    ports: tuple[int, int] | None
    protocol: str
    #: The last address of a range ``FIRST-LAST``.
    last: IPv4Address | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    log: bool = False

    @property
    def destination(self) -> str:
        """The destination as ``net out`` takes it (without ports)."""
        if self.last is not None:
            return f"{self.network.network_address}-{self.last}"
        return str(self.network)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "network": str(self.network),
            "ports": list(self.ports) if self.ports else None,
            "protocol": self.protocol,
        }
        if self.last is not None:
            data["last"] = str(self.last)
        if self.icmp_type is not None:
            data["icmp_type"] = self.icmp_type
        if self.icmp_code is not None:
            data["icmp_code"] = self.icmp_code
        if self.log:
            data["log"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Egress:
        ports, last = data.get("ports"), data.get("last")
        return cls(
            IPv4Network(data["network"]),
            (int(ports[0]), int(ports[1])) if ports else None,
            data["protocol"],
            IPv4Address(last) if last else None,
            data.get("icmp_type"),
            data.get("icmp_code"),
            bool(data.get("log", False)),
        )


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidRequest(f"net out: {spec!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class Forward:
    """One ``net in``: a host TCP port (on one host address, or on every local one)
    forwarded to a container port."""

    host_port: int
    container_port: int
    host_address: IPv4Address | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"host_port": self.host_port, "container_port": self.container_port}
        if self.host_address is not None:
            data["host_address"] = str(self.host_address)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Forward:
        if isinstance(data, list):  # records written before host addresses: [host, container]
            return cls(int(data[0]), int(data[1]))
        address = data.get("host_address")
        return cls(
            int(data["host_port"]),
            int(data["container_port"]),
            IPv4Address(address) if address else None,
        )


def _icmp_field(name: str, value: Any) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255
    ):
        raise InvalidRequest(f"net out: {name} {value!r} is not a number from 0 to 255")
    return value


def _destination(spec: str, address: str) -> tuple[IPv4Network, IPv4Address | None]:
    """``ADDR[/MASK]`` as a network, or ``FIRST-LAST`` as the /32 of FIRST and LAST."""
    first, dash, last = address.partition("-")
    try:
        if not dash:
            return IPv4Network(address, strict=False), None
        low, high = IPv4Address(first), IPv4Address(last)
    except ValueError:
        raise InvalidRequest(
            f"net out: {spec!r}: {address!r} is not an IPv4 address, network or range FIRST-LAST"
        ) from None
    if low > high:
        raise InvalidRequest(f"net out: {spec!r}: the range {address} is empty")
    return IPv4Network(low), high


def parse_egress(
    spec: Any,
    protocol: Any = "all",
    icmp_type: Any = None,
    icmp_code: Any = None,
    log: bool = False,
) -> Egress:
    """Parse ``ADDR[/MASK][:PORT[-PORT]]`` or ``FIRST-LAST[:PORT[-PORT]]``, a protocol,
    an ICMP type and code, and the log flag into an :class:`Egress`.

    Host bits under the mask are ignored (``10.1.2.3/24`` is ``10.1.2.0/24``). With
    protocol ``all`` a port range applies to TCP and UDP.

    Raises:
        InvalidRequest: naming the part of the spec that is wrong.
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidRequest(
            "net out: destination must be a string ADDR[/MASK][:PORT[-PORT]] "
            f"or FIRST-LAST[:PORT[-PORT]], got {spec!r}"
        )
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"net out: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    icmp_type, icmp_code = _icmp_field("icmp_type", icmp_type), _icmp_field("icmp_code", icmp_code)
    if (icmp_type is not None or icmp_code is not None) and protocol != "icmp":
        raise InvalidRequest(f"net out: {spec!r}: icmp_type and icmp_code need protocol icmp")
    if icmp_code is not None and icmp_type is None:
        raise InvalidRequest(f"net out: {spec!r}: icmp_code needs an icmp_type")
    address, _, ports_text = spec.partition(":")
    network, last = _destination(spec, address)
    ports: tuple[int, int] | None = None
    if ports_text:
        low, _, high = ports_text.partition("-")
        ports = (_port(low, spec), _port(high or low, spec))
        if ports[0] > ports[1]:
            raise InvalidRequest(f"net out: {spec!r}: port range {ports_text} is empty")
        if protocol == "icmp":
            raise InvalidRequest(
                f"net out: {spec!r}: ICMP has no ports; use protocol tcp, udp or all"
            )
    return Egress(network, ports, protocol, last, icmp_type, icmp_code, log)


# -- expression helpers ----------------------------------------------------------


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _ip(field: str) -> Expr:
    return {"payload": {"protocol": "ip", "field": field}}


def _net(network: IPv4Network) -> Any:
    if network.prefixlen == 32:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _ports(ports: tuple[int, int]) -> Any:
    return ports[0] if ports[0] == ports[1] else {"range": list(ports)}


def _established() -> Expr:
    return _match({"ct": {"key": "state"}}, ["established", "related"], "in")


ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}


class Ruleset:
    """Builds the JSON commands of one daemon's table from its settings."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.table = settings.table

    def _rule(self, chain: str, tag: str, *expr: Expr) -> Command:
        return {
            "add": {
                "rule": {
                    "family": FAMILY,
                    "table": self.table,
                    "chain": chain,
                    "comment": tag,
                    "expr": list(expr),
                }
            }
        }

    def table_ref(self) -> dict[str, Any]:
        """The table as nft JSON names it."""
        return {"family": FAMILY, "name": self.table}

    def list_table(self) -> list[Command]:
        """Commands listing the table (with rule handles)."""
        return [{"list": {"table": self.table_ref()}}]

    def delete_table(self) -> list[Command]:
        """Commands removing the table whether or not it exists."""
        return [{"add": {"table": self.table_ref()}}, {"delete": {"table": self.table_ref()}}]

    def base(self) -> list[Command]:
        """The whole table with its static rules, replacing any existing one (one transaction)."""
        s, any_dev = self.s, self.s.wildcard
        cmds: list[Command] = [*self.delete_table(), {"add": {"table": self.table_ref()}}]
        for name, (kind, hook, prio) in BASE_CHAINS.items():
            chain = {
                "family": FAMILY,
                "table": self.table,
                "name": name,
                "type": kind,
                "hook": hook,
                "prio": prio,
                "policy": "accept",
            }
            cmds.append({"add": {"chain": chain}})
        cmds.append(
            {"add": {"chain": {"family": FAMILY, "table": self.table, "name": EGRESS_CHAIN}}}
        )
        iif, oif = _meta("iifname"), _meta("oifname")
        rule = self._rule
        cmds += [
            rule("forward", BASE_TAG, _match(iif, any_dev), _established(), ACCEPT),
            rule("forward", BASE_TAG, _match(oif, any_dev), _established(), ACCEPT),
        ]
        for name in s.bridges:
            # Bridged traffic between containers of one bridge passes here when
            # br_netfilter is loaded: it is layer-2 neighbours talking, always allowed.
            dev = s.bridge_device(name)
            cmds.append(rule("forward", BASE_TAG, _match(iif, dev), _match(oif, dev), ACCEPT))
        cmds += [
            # Published ports (`net in`) are reachable from everywhere, other containers too.
            rule(
                "forward",
                BASE_TAG,
                _match(oif, any_dev),
                _match({"ct": {"key": "status"}}, "dnat", "in"),
                ACCEPT,
            ),
            rule("forward", BASE_TAG, _match(iif, any_dev), {"jump": {"target": EGRESS_CHAIN}}),
            rule("forward", BASE_TAG, _match(iif, any_dev), DROP),
            rule("forward", BASE_TAG, _match(oif, any_dev), DROP),
        ]
        # route_localnet on Corral's devices (for `net in` to 127.0.0.1, below) would let
        # a container's packet addressed to 127.0.0.1 reach services bound to the host's
        # loopback: only replies (of those forwards) may come in for 127/8.
        cmds.append(
            rule(
                "input",
                BASE_TAG,
                _match(iif, any_dev),
                _match(_ip("daddr"), _net(LOOPBACK)),
                _match({"ct": {"key": "direction"}}, "original"),
                DROP,
            )
        )
        if not s.allow_host_access:
            cmds += [
                rule("input", BASE_TAG, _match(iif, any_dev), _established(), ACCEPT),
                rule("input", BASE_TAG, _match(iif, any_dev), DROP),
            ]
        if s.allow_networks:
            nets = {"set": [_net(n) for n in s.allow_networks]}
            cmds.append(rule(EGRESS_CHAIN, BASE_TAG, _match(_ip("daddr"), nets), ACCEPT))
        for network in (s.pool, *s.bridges.values()):
            # Outbound NAT only for Corral's own subnets, and only when leaving by another device.
            cmds.append(
                rule(
                    "postrouting",
                    BASE_TAG,
                    _match(_ip("saddr"), _net(network)),
                    _match(oif, any_dev, "!="),
                    {"masquerade": None},
                )
            )
        # `net in` from the host to 127.0.0.1: the DNAT'd packet keeps its loopback
        # source (allowed out by route_localnet on Corral's devices); give it the host
        # end's address so the container can answer.
        cmds.append(
            rule(
                "postrouting",
                BASE_TAG,
                _match(_ip("saddr"), _net(LOOPBACK)),
                _match(oif, any_dev),
                {"masquerade": None},
            )
        )
        return cmds

    def bridge(self, device: str, subnet: IPv4Network) -> list[Command]:
        """The rules of a bridge made on demand, as a configured bridge has them in
        :meth:`base`: its local traffic accepted (inserted at the head of ``forward``,
        before the drops) and its subnet masqueraded when it leaves by a non-Corral device."""
        tag = BRIDGE_TAG + device
        iif, oif = _meta("iifname"), _meta("oifname")
        local = self._rule("forward", tag, _match(iif, device), _match(oif, device), ACCEPT)
        nat = self._rule(
            "postrouting",
            tag,
            _match(_ip("saddr"), _net(subnet)),
            _match(oif, self.s.wildcard, "!="),
            {"masquerade": None},
        )
        return [{"insert": local["add"]}, nat]

    def forward(self, handle: str, forward: Forward, address: IPv4Address) -> list[Command]:
        """DNAT of TCP to the host port (of one host address, or of any local one) to the
        container's port at *address*."""
        if forward.host_address is None:
            to_host = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
        else:
            to_host = _match(_ip("daddr"), str(forward.host_address))
        expr = (
            to_host,
            _match({"payload": {"protocol": "tcp", "field": "dport"}}, forward.host_port),
            {"dnat": {"family": "ip", "addr": str(address), "port": forward.container_port}},
        )
        return [self._rule("prerouting", handle, *expr), self._rule("output", handle, *expr)]

    def egress(
        self, handle: str, device: str, address: IPv4Address, allow: Egress
    ) -> list[Command]:
        """Accept traffic from the container (by device and source address) to one destination."""
        expr: list[Expr] = [_match(_meta("iifname"), device), _match(_ip("saddr"), str(address))]
        if allow.last is not None:
            first = str(allow.network.network_address)
            expr.append(_match(_ip("daddr"), {"range": [first, str(allow.last)]}))
        elif allow.network.prefixlen:
            expr.append(_match(_ip("daddr"), _net(allow.network)))
        l4 = _meta("l4proto")
        if allow.protocol in ("tcp", "udp", "icmp"):
            expr.append(_match(l4, allow.protocol))
        elif allow.ports:
            expr.append(_match(l4, {"set": ["tcp", "udp"]}))
        if allow.ports:
            expr.append(
                _match({"payload": {"protocol": "th", "field": "dport"}}, _ports(allow.ports))
            )
        for field in ("type", "code"):
            value = getattr(allow, f"icmp_{field}")
            if value is not None:
                expr.append(_match({"payload": {"protocol": "icmp", "field": field}}, value))
        if allow.log:
            # Only what no established flow accepted reaches this chain: new connections.
            expr.append({"log": {"prefix": f"{LOG_PREFIX}{handle} "}})
        return [self._rule(EGRESS_CHAIN, handle, *expr, ACCEPT)]

    def container(
        self,
        handle: str,
        device: str,
        address: IPv4Address,
        forwards: Iterable[Forward],
        egress: Iterable[Egress],
    ) -> list[Command]:
        """Every rule of one container."""
        cmds: list[Command] = []
        for forward in forwards:
            cmds += self.forward(handle, forward, address)
        for allow in egress:
            cmds += self.egress(handle, device, address, allow)
        return cmds

    def delete_tagged(self, listing: list[dict[str, Any]], tag: str) -> list[Command]:
        """Commands deleting every rule of the listed table whose comment is *tag*."""
        cmds: list[Command] = []
        for item in listing:
            rule = item.get("rule")
            if rule and rule.get("comment") == tag:
                cmds.append(
                    {
                        "delete": {
                            "rule": {
                                "family": FAMILY,
                                "table": self.table,
                                "chain": rule["chain"],
                                "handle": rule["handle"],
                            }
                        }
                    }
                )
        return cmds
