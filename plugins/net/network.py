"""The network of one daemon: every container's address, devices and rules, kept consistent.

A container's :class:`Attachment` is written to its ``plugin_state`` before any
device is made, so a daemon that dies half-way finds what to remove. The
records are the truth: at start the pools are rebuilt from the restored
containers, devices of no live container are deleted, and the nftables table
is replaced in one transaction by the rules the records describe.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import structlog
import trio

from plugins.net import links, netlink, shaping
from plugins.net.firewall import Firewall
from plugins.net.pool import AddressPool, BridgePool, Lease, PortPool, SlotPool, SubnetPool
from plugins.net.rules import BRIDGE_TAG, Egress, Forward, Ruleset
from plugins.net.settings import IFNAME_MAX, MAX_IDS, NAME, WORD_RE, Settings
from supervisor.api import (
    ContainerView,
    InvalidRequest,
    InvalidState,
    NetRuleChanged,
    NoCapacity,
    Sandbox,
    State,
)

log = structlog.get_logger()

NETWORK_KEYS = ("address", "bridge", "gateway", "bandwidth")
#: ``create`` CONFIG ``"network": "none"``: no veth, no address; the container's own
#: network namespace has only its loopback.
NO_NETWORK = "none"


#: Seconds a released device name is not reused: the kernel removes the veth of a
#: destroyed container asynchronously, with its network namespace.
DEVICE_QUARANTINE = 10.0


@dataclass
class Attachment:
    """What the network plugin holds for one container (persisted in its ``plugin_state``)."""

    handle: str
    ident: int
    #: Host end of the container's veth.
    device: str
    #: Device the container's traffic enters the host by: the veth, or its bridge.
    ingress: str
    #: Bridge name (configured or made on demand), or None for a /30 of the pool.
    bridge: str | None
    lease: Lease
    #: The bridge was made on demand for the lease's subnet (not configured).
    on_demand: bool = False
    forwards: list[Forward] = field(default_factory=list)
    egress: list[Egress] = field(default_factory=list)
    bandwidth: shaping.Bandwidth | None = None
    #: Release has begun: no rule may be added any more.
    closed: bool = False
    #: The daemon shut down and left the container running.
    detached: bool = False

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "device": self.device,
            "ingress": self.ingress,
            "bridge": self.bridge,
            "lease": self.lease.to_json(),
            "bridge_on_demand": self.on_demand,
            "forwards": [f.to_json() for f in self.forwards],
            "egress": [e.to_json() for e in self.egress],
            "bandwidth": self.bandwidth.to_json() if self.bandwidth else None,
        }

    @classmethod
    def from_state(cls, handle: str, data: dict[str, Any]) -> Attachment:
        return cls(
            handle=handle,
            ident=data["id"],
            device=data["device"],
            ingress=data["ingress"],
            bridge=data.get("bridge"),
            lease=Lease.from_json(data["lease"]),
            on_demand=data.get("bridge_on_demand", False),
            forwards=[Forward.from_json(f) for f in data.get("forwards", [])],
            egress=[Egress.from_json(e) for e in data.get("egress", [])],
            bandwidth=shaping.Bandwidth.from_json(bw) if (bw := data.get("bandwidth")) else None,
        )


def _interface(value: Any, what: str) -> IPv4Interface:
    if isinstance(value, str):
        try:
            return IPv4Interface(value)
        except ValueError:
            pass
    raise InvalidRequest(f"network: {what} {value!r} is not an IPv4 address A.B.C.D[/NN]")


def _networks(networks: Sequence[IPv4Network]) -> str:
    return ", ".join(map(str, networks)) or "none configured"


def _rule_json(allow: Egress) -> dict[str, Any]:
    """A ``net out`` rule as a client would give it again (to revoke it)."""
    ports = allow.ports
    data: dict[str, Any] = {
        "destination": allow.destination
        + (
            ""
            if not ports
            else f":{ports[0]}"
            if ports[0] == ports[1]
            else f":{ports[0]}-{ports[1]}"
        ),
        "protocol": allow.protocol,
    }
    for key in ("icmp_type", "icmp_code"):
        if getattr(allow, key) is not None:
            data[key] = getattr(allow, key)
    if allow.log:
        data["log"] = True
    return data


class Network:
    """Pools, devices and rules of every container of this daemon."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ruleset = Ruleset(settings)
        self.firewall = Firewall(self.ruleset)
        self.subnets = SubnetPool(settings.pool, settings.quarantine)
        self.bridges = {
            name: BridgePool(name, net, settings.quarantine)
            for name, net in settings.bridges.items()
        }
        self.ports = PortPool(*settings.port_range)
        self.ids = SlotPool("device names", MAX_IDS, DEVICE_QUARANTINE)
        self.attachments: dict[str, Attachment] = {}
        #: Names of the bridges of :attr:`bridges` made on demand (``bridge_networks``).
        self.made: set[str] = set()
        #: Handles of the containers on each bridge, from the reservation of their address
        #: (a bridge exists while it has members; one made on demand goes with its last).
        self.members: dict[str, set[str]] = {name: set() for name in settings.bridges}
        self._bridge_lock = trio.Lock()
        #: Route sockets in the network namespaces of containers with a bandwidth limit.
        self.inside: dict[str, netlink.RouteSocket] = {}
        #: Held from "may this container get a rule" to "the rule is recorded".
        self._rules_lock = trio.Lock()

    # -- create options ------------------------------------------------------------

    def check_options(self, value: Any) -> dict[str, Any]:
        """Validate the ``network`` key of ``create`` (see README.md); return it normalized."""
        if value is None:
            value = {}
        if value == NO_NETWORK:
            return NO_NETWORK  # type: ignore[return-value]
        if not isinstance(value, dict) or set(value) - set(NETWORK_KEYS):
            raise InvalidRequest(
                'network: must be "none" or an object with "address": "A.B.C.D[/NN]", '
                '"bridge": NAME, "gateway": "A.B.C.D" and/or '
                '"bandwidth": {"rate": BYTES_PER_SECOND, "burst": BYTES}'
            )
        try:
            bandwidth = shaping.parse_bandwidth(value.get("bandwidth"), self.settings.mtu)
        except InvalidRequest as exc:
            raise InvalidRequest(f"network: {exc.message}") from None
        return {**self._check_address(value), "bandwidth": bandwidth and bandwidth.to_json()}

    def _check_address(self, value: dict[str, Any]) -> dict[str, Any]:
        bridge, address, gateway = value.get("bridge"), value.get("address"), value.get("gateway")
        if bridge is not None and not isinstance(bridge, str):
            raise InvalidRequest(f"network: bridge {bridge!r} is not a name")
        if gateway is not None and address is None:
            raise InvalidRequest("network: gateway goes with an address (A.B.C.D/NN)")
        if address is None:
            if bridge is not None and bridge not in self.bridges:
                raise InvalidRequest(
                    f"network: unknown bridge {bridge!r} ({self._known_bridges()}); to make it, "
                    f"give an address A.B.C.D/NN of a subnet in bridge_networks "
                    f"({_networks(self.settings.bridge_networks)})"
                )
            return {"address": None, "bridge": bridge}
        interface = _interface(address, "address")
        ip = interface.ip
        gateway_ip = None if gateway is None else _interface(gateway, "gateway").ip
        if bridge is None:
            # An address of a bridge's subnet puts the container on that bridge.
            bridge = next((n for n, p in self.bridges.items() if ip in p.network), None)
        if bridge is None and ip not in self.subnets.network and "/" in address:
            return self._check_on_demand(interface, None, gateway_ip)
        if bridge is not None and bridge not in self.bridges:
            return self._check_on_demand(interface, bridge, gateway_ip)
        pool = self._pool(bridge)
        if ip not in pool.network:
            raise InvalidRequest(
                f"network: address {ip} is not in the address pool {self.subnets.network}"
                + "".join(f" nor in bridge {n} ({p.network})" for n, p in self.bridges.items())
                + (
                    f" nor in bridge_networks ({_networks(self.settings.bridge_networks)}: "
                    "give the prefix length, A.B.C.D/NN, to make a bridge for its subnet)"
                    if self.settings.bridge_networks and bridge is None
                    else ""
                )
            )
        expected = pool.lease(0).prefixlen
        if "/" in address and interface.network.prefixlen != expected:
            raise InvalidRequest(
                f"network: address {address}: the prefix length here is /{expected}"
            )
        try:
            slot = pool.slot_of(ip)
        except InvalidRequest as exc:
            raise InvalidRequest(f"network: {exc.message}") from None
        if gateway_ip is not None and gateway_ip != pool.lease(slot).gateway:
            where = "a /30 of the pool" if bridge is None else f"bridge {bridge} ({pool.network})"
            raise InvalidRequest(
                f"network: gateway {gateway_ip} refused: {where} has the gateway "
                f"{pool.lease(slot).gateway}"
            )
        return {"address": str(ip), "bridge": bridge}

    def _known_bridges(self) -> str:
        configured = ", ".join(sorted(set(self.bridges) - self.made)) or "none"
        made = ", ".join(sorted(self.made))
        return f"configured: {configured}" + (f"; made on demand: {made}" if made else "")

    def _check_on_demand(
        self, interface: IPv4Interface, bridge: str | None, gateway: IPv4Address | None
    ) -> dict[str, Any]:
        """The options of a container on a bridge to make on demand for *interface*'s subnet
        (named *bridge*, or after the subnet), checked against the config and the bridges
        now (the host's networks are checked when the bridge is made)."""
        subnet, ip = interface.network, interface.ip
        allowed = self.settings.bridge_networks
        if not any(subnet.subnet_of(n) for n in allowed):
            raise InvalidRequest(
                f"network: address {interface} is not in the address pool {self.subnets.network}"
                + "".join(f" nor in bridge {n} ({p.network})" for n, p in self.bridges.items())
                + f", and its subnet {subnet} is not inside bridge_networks "
                f"({_networks(allowed)}), where bridges are made on demand"
            )
        if subnet.num_addresses < 4:
            raise InvalidRequest(f"network: subnet {subnet} has no room for containers")
        name = bridge or self.settings.on_demand_name(subnet)
        device = self.settings.bridge_device(name)
        if not WORD_RE.match(name) or len(device) > IFNAME_MAX:
            raise InvalidRequest(
                f"network: bridge name {name!r} must be letters, digits, '_' or '-', and its "
                f"device {device!r} at most {IFNAME_MAX} characters"
                + ("" if bridge else ': name the bridge with a shorter "bridge"')
            )
        self._check_subnet(subnet, name)
        gateway = gateway or IPv4Address(int(subnet.network_address) + 1)
        for what, address in (("address", ip), ("gateway", gateway)):
            if address not in subnet or address in (
                subnet.network_address,
                subnet.broadcast_address,
            ):
                raise InvalidRequest(f"network: {what} {address} is not a host address of {subnet}")
        if ip == gateway:
            raise InvalidRequest(f"network: address {ip} is the gateway of bridge {name}")
        return {"address": str(ip), "bridge": name, "subnet": str(subnet), "gateway": str(gateway)}

    def _check_subnet(self, subnet: IPv4Network, name: str) -> None:
        """Refuse a subnet for a new bridge that overlaps the pool or another bridge."""
        if subnet.overlaps(self.subnets.network):
            raise InvalidRequest(
                f"network: subnet {subnet} overlaps the address pool {self.subnets.network}"
            )
        for other, pool in self.bridges.items():
            if other == name:
                raise InvalidRequest(
                    f"network: bridge {name} exists with subnet {pool.network}, not {subnet}"
                )
            if pool.network.overlaps(subnet):
                raise InvalidRequest(
                    f"network: subnet {subnet} overlaps bridge {other} ({pool.network})"
                    + ('; leave "bridge" out to join it' if pool.network == subnet else "")
                )

    @staticmethod
    def wanted(container: ContainerView) -> bool:
        """Whether the container has a network (not ``"network": "none"``)."""
        return container.options.get("network") != NO_NETWORK

    def _pool(self, bridge: str | None) -> AddressPool:
        return self.subnets if bridge is None else self.bridges[bridge]

    # -- container lifetime -----------------------------------------------------------

    def reserve(self, container: ContainerView) -> Attachment:
        """A new container's address and device name, in its plugin state (saved with its next record).

        Raises:
            NoCapacity: the address pool (or bridge subnet) is exhausted.
            InvalidRequest: the address asked for is taken or in quarantine.
        """
        options = container.options.get("network") or {}
        bridge, address = options.get("bridge"), options.get("address")
        ident = self.ids.allocate()
        try:
            if "subnet" in options:
                self._bridge_on_demand(options)
            on_demand = bridge in self.made  # made for it, or joined
            pool = self._pool(bridge)
            try:
                lease = pool.reserve(IPv4Address(address)) if address else pool.allocate()
            except InvalidRequest as exc:
                raise InvalidRequest(f"network: {exc.message}") from None
            except NoCapacity as exc:
                raise NoCapacity(f"container {container.handle}: {exc.message}") from None
        except BaseException:
            self.ids.release(ident, quarantine=False)
            if bridge in self.made and not self.members.get(bridge):
                self._forget_bridge(bridge)  # made for this container alone
            raise
        if bridge is not None:
            self.members.setdefault(bridge, set()).add(container.handle)
        device = self.settings.veth_name(ident)
        ingress = device if bridge is None else self.settings.bridge_device(bridge)
        bandwidth = options.get("bandwidth")
        att = Attachment(container.handle, ident, device, ingress, bridge, lease, on_demand)
        att.bandwidth = shaping.Bandwidth.from_json(bandwidth) if bandwidth else None
        self.attachments[att.handle] = att
        # Saved with the container's next record. A daemon that dies before that
        # leaves nothing to give back: the pool lives in memory, and the veth goes
        # with the container's network namespace when its init is killed.
        self._record(container, att)
        return att

    def _bridge_on_demand(self, options: dict[str, Any]) -> None:
        """Make the pool of the bridge made on demand that *options* name, unless it is
        there (its device comes when its first container is plumbed).

        Raises:
            InvalidRequest: the bridge exists with another subnet or gateway, or another
                create made an overlapping one since the options were checked.
        """
        name = options["bridge"]
        subnet, gateway = IPv4Network(options["subnet"]), IPv4Address(options["gateway"])
        pool = self.bridges.get(name)
        if pool is None:
            self._check_subnet(subnet, name)
            self.bridges[name] = BridgePool(name, subnet, self.settings.quarantine, gateway=gateway)
            self.made.add(name)
        elif name not in self.made or pool.network != subnet:
            raise InvalidRequest(
                f"network: bridge {name} exists with subnet {pool.network}, not {subnet}"
            )
        elif pool.gateway != gateway:
            raise InvalidRequest(
                f"network: gateway {gateway} refused: bridge {name} ({subnet}) has the "
                f"gateway {pool.gateway}"
            )

    def _forget_bridge(self, name: str) -> None:
        """Drop the pool of a bridge made on demand (its device and rules are removed apart)."""
        self.bridges.pop(name, None)
        self.members.pop(name, None)
        self.made.discard(name)

    async def attach(
        self, container: ContainerView, att: Attachment | None = None, plumbed: bool = False
    ) -> None:
        """Give a new container its network (*att* reserved, and *plumbed* and configured,
        already); on failure leave nothing.

        Raises:
            NoCapacity: the address pool (or bridge subnet) is exhausted.
            InvalidRequest: the address asked for is taken or in quarantine.
            LinkError: a device could not be made.
        """
        sandbox = container.sandbox
        assert sandbox is not None
        started = time.perf_counter()
        att = att or self.reserve(container)
        try:
            if not plumbed:
                await self._plumb_running(att, sandbox)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abandon(container, att, made=False)
            raise
        if att.bandwidth is not None and not plumbed:  # else plumb shaped it
            try:
                await self._shape(att, att.bandwidth, sandbox.pid)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.abandon(container, att, made=True)
                raise
        container.log.info(
            "network attached",
            address=att.lease.cidr,
            device=att.device,
            bridge=att.bridge,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def abandon(self, container: ContainerView, att: Attachment, made: bool) -> None:
        """Give back what a container that never ran holds, its veth too if *made* (never raises)."""
        if made:
            try:
                await links.delete_link(att.device)
            except Exception:
                container.log.exception("veth of a failed create not deleted", device=att.device)
        self._close_inside(att)
        await self._teardown(att, quarantine=False)
        container.plugin_state(NAME).clear()

    async def restore(self, container: ContainerView) -> None:
        """Re-adopt a restored container's network; re-create its veth if it vanished, and
        apply its bandwidth limit again (a daemon killed while applying left it half-made)."""
        state = container.plugin_state(NAME)
        if not state:
            return  # it died before anything of the network was acquired
        att = Attachment.from_state(container.handle, state)
        if att.on_demand and att.bridge is not None and att.bridge not in self.bridges:
            # Made on demand before the restart: made again from its members' leases.
            subnet = IPv4Interface(att.lease.cidr).network
            self.bridges[att.bridge] = BridgePool(
                att.bridge, subnet, self.settings.quarantine, gateway=att.lease.gateway
            )
            self.made.add(att.bridge)
        self._reserve_restored(att, container)
        self.attachments[att.handle] = att
        if att.bridge is not None:
            self.members.setdefault(att.bridge, set()).add(att.handle)
        sandbox = container.sandbox
        if container.state is State.BORN or sandbox is None or not sandbox.alive:
            return
        if not await trio.to_thread.run_sync(links.exists, att.device):
            container.log.warning(
                "network device missing after restart; re-creating", device=att.device
            )
            try:
                await self._plumb_running(att, sandbox)
            except Exception:
                container.log.exception("network device could not be re-created", device=att.device)
                return
        if att.bandwidth is not None:
            try:
                await self._shape(att, att.bandwidth, sandbox.pid)
            except Exception:
                container.log.exception("bandwidth limit could not be applied again")

    def _reserve_restored(self, att: Attachment, container: ContainerView) -> None:
        steps: list[tuple[str, Any]] = [
            ("address", lambda: self._pool(att.bridge).reserve(att.lease.address, force=True)),
            ("device id", lambda: self.ids.reserve(att.ident, f"device {att.device}", force=True)),
        ]
        steps += [
            (f"host port {f.host_port}", lambda p=f.host_port: self.ports.reserve(p, force=True))
            for f in att.forwards
        ]
        for what, step in steps:
            try:
                step()
            except (InvalidRequest, KeyError) as exc:
                # Two records claim the same thing: keep both, say so loudly.
                container.log.error("network resource claimed twice", what=what, error=str(exc))

    async def release(self, container: ContainerView) -> None:
        """Remove everything of the container: rules, devices, addresses, ports.

        When the daemon only detaches (shutdown), nothing is touched.
        """
        att = self.attachments.get(container.handle)
        if att is None:
            return
        if container.detaching:
            att.detached = True
            return
        async with self._rules_lock:
            att.closed = True
            if att.forwards or att.egress:
                try:
                    await self.firewall.remove_tagged(att.handle)
                except Exception:
                    container.log.exception("firewall rules of the container not removed")
        self._close_inside(att)
        # The veth pair is not deleted here: it goes with the container's network
        # namespace when the init is killed, right after. Deleting it ourselves
        # waits ~16 ms for the kernel (an RCU grace period); the namespace's
        # cleanup does the same work in the background, batched.
        await self._teardown(att, quarantine=True)
        container.log.info("network released", address=att.lease.cidr, device=att.device)

    async def plumb(self, att: Attachment, netns: int, route_socket: int | None = None) -> None:
        """Make the container's veth, ``eth0`` in the network namespace *netns* (an fd);
        with *route_socket* (a NETLINK_ROUTE socket opened in that namespace) configure
        ``eth0`` and shape both ends too, else :meth:`attach` has the init configure it
        and shapes them.

        Needs no sandbox: it may run while the container's init sets up. On
        failure it removes what it made (a device of that name it did not make stays).

        Raises:
            LinkError: a device could not be made.
        """
        bridge_device = None
        if att.bridge is not None:
            bridge_device = self.settings.bridge_device(att.bridge)
            async with self._bridge_lock:
                self.members.setdefault(att.bridge, set()).add(att.handle)
                if att.bridge in self.made:
                    await self._make_bridge(att.bridge, bridge_device)
                else:
                    await trio.to_thread.run_sync(
                        links.ensure_bridge,
                        bridge_device,
                        att.lease.gateway_cidr,
                        self.settings.mtu,
                    )
        await links.create_veth(att.device, netns, att.lease, bridge_device, self.settings.mtu)
        if route_socket is None:
            return
        await links.configure_container_end(att.device, route_socket, att.lease, att.bandwidth)
        if att.bandwidth is not None:
            try:
                await shaping.shape(links.host_route_socket(), att.device, att.bandwidth)
            except OSError as exc:
                with trio.CancelScope(shield=True):
                    await links.delete_link(att.device)
                raise links.LinkError(f"bandwidth of veth {att.device}: {exc.strerror}") from exc
            # Kept for the limit's stats and changes.
            self.inside[att.handle] = netlink.RouteSocket(route_socket)

    async def _make_bridge(self, name: str, device: str) -> None:
        """Make the device and rules of bridge *name*, made on demand, unless it exists:
        refused when its subnet overlaps a network the host uses now (held: the bridge lock).

        Raises:
            InvalidRequest: the host uses the subnet (its addresses or routes).
            LinkError, FirewallError: the device or its rules could not be made.
        """
        if await trio.to_thread.run_sync(links.exists, device):
            return
        pool = self.bridges[name]
        used = await trio.to_thread.run_sync(links.host_networks, self.settings.interface_prefix)
        for host_device, net in used:
            if net.overlaps(pool.network):
                # Routing it would hijack or break the host's own networking.
                raise InvalidRequest(
                    f"network: subnet {pool.network} overlaps {net} of host device "
                    f"{host_device}; choose a subnet the host does not use"
                )
        gateway = f"{pool.gateway}/{pool.network.prefixlen}"
        await trio.to_thread.run_sync(links.ensure_bridge, device, gateway, self.settings.mtu)
        try:
            await self.firewall.apply(
                self.ruleset.bridge(device, pool.network), f"add the rules of bridge {device}"
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await links.delete_link(device)
            raise
        log.info("bridge made on demand", device=device, subnet=str(pool.network))

    async def _plumb_running(self, att: Attachment, sandbox: Sandbox) -> None:
        """:meth:`plumb` into a running sandbox's namespace; its init configures ``eth0``."""
        with links.network_namespace_of(sandbox.pid) as netns:
            await self.plumb(att, netns)
        await self._configure(att, sandbox)

    async def _configure(self, att: Attachment, sandbox: Sandbox) -> None:
        try:
            # The container's init, in its network namespace, configures eth0.
            await sandbox.configure_interface(
                links.CONTAINER_IFNAME,
                str(att.lease.address),
                att.lease.prefixlen,
                str(att.lease.gateway),
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await links.delete_link(att.device)
            raise

    async def _teardown(self, att: Attachment, quarantine: bool) -> None:
        """Give back what the container held, and its bridge if it was the last (never raises).

        The container's veth is not deleted here: it goes with the container's
        network namespace (see :meth:`release`), or :meth:`plumb` removed it.
        """
        try:
            self._pool(att.bridge).release(att.lease, quarantine)
        except (InvalidRequest, KeyError):
            pass  # the pool or bridge changed in the config; nothing to give back
        if att.bridge is not None:
            async with self._bridge_lock:
                members = self.members.setdefault(att.bridge, set())
                members.discard(att.handle)
                if not members:
                    await self._remove_bridge(att.bridge)
        # A device name waits too: its veth may still be on its way out (see release).
        self.ids.release(att.ident, quarantine=quarantine)
        for forward in att.forwards:
            self.ports.release(forward.host_port)
        if self.attachments.get(att.handle) is att:
            del self.attachments[att.handle]

    async def _remove_bridge(self, name: str) -> None:
        """Delete the device of a bridge left without members, and the pool and rules of one
        made on demand (held: the bridge lock; never raises)."""
        device = self.settings.bridge_device(name)
        made = name in self.made
        if made:
            # Forgotten before any await: a create from now on makes it anew (its
            # device and rules once this lock is free).
            self._forget_bridge(name)
        try:
            await links.delete_link(device)
        except Exception:
            log.exception("unused bridge not deleted", device=device)
        if made:
            try:
                await self.firewall.remove_tagged(BRIDGE_TAG + device)
            except Exception:
                log.exception("rules of a removed bridge not removed", device=device)
            log.info("bridge made on demand removed", device=device)

    # -- bandwidth -------------------------------------------------------------------

    async def _inside(self, att: Attachment, pid: int) -> netlink.RouteSocket:
        """A route socket in the container's network namespace, kept while it has a limit."""
        rtnl = self.inside.get(att.handle)
        if rtnl is None:
            sock = await trio.to_thread.run_sync(shaping.route_socket_in, pid)
            with sock:
                rtnl = self.inside[att.handle] = netlink.RouteSocket(sock.fileno())
        return rtnl

    def _close_inside(self, att: Attachment) -> None:
        rtnl = self.inside.pop(att.handle, None)
        if rtnl is not None:
            rtnl.close()

    async def _shape(self, att: Attachment, bandwidth: shaping.Bandwidth | None, pid: int) -> None:
        """Shape both ends of the container's veth (None: stop) (process *pid* is in its
        network namespace).

        Raises:
            LinkError: naming the device and the kernel's reason.
        """
        try:
            await shaping.shape(links.host_route_socket(), att.device, bandwidth)
            await shaping.shape(await self._inside(att, pid), links.CONTAINER_IFNAME, bandwidth)
        except OSError as exc:
            raise links.LinkError(f"bandwidth of veth {att.device}: {exc.strerror}") from exc
        if bandwidth is None:
            self._close_inside(att)

    async def set_bandwidth(self, container: ContainerView, value: Any) -> Any:
        """``limit HANDLE bandwidth VALUE``: shape both directions, or (``{}``) stop.

        Raises:
            InvalidRequest: a bad value; nothing changed.
            InvalidState: the container's processes are gone.
        """
        bandwidth = shaping.parse_bandwidth(value, self.settings.mtu)
        async with self._rules_lock:
            att = self.attachment(container)
            sandbox = container.sandbox
            if sandbox is None or not sandbox.alive:
                raise InvalidState(f"container {container.handle}: its init is gone")
            await self._shape(att, bandwidth, sandbox.pid)
            att.bandwidth = bandwidth
            self._save(container, att)
        container.log.info("bandwidth set", bandwidth=value)
        return bandwidth and bandwidth.to_json()

    async def bandwidth_stat(self, container: ContainerView) -> dict[str, Any] | None:
        """``bandwidth_stat`` as Warden had it, with the bytes and drops of each bucket
        (``in``: to the container); None without a limit."""
        att = self.attachment(container)
        sandbox = container.sandbox
        if att.bandwidth is None:
            return None
        in_bytes, in_dropped = await shaping.sent_and_dropped(links.host_route_socket(), att.device)
        out_bytes = out_dropped = None
        if sandbox is not None and sandbox.alive:
            inside = await self._inside(att, sandbox.pid)
            out_bytes, out_dropped = await shaping.sent_and_dropped(inside, links.CONTAINER_IFNAME)
        rate, burst = att.bandwidth.rate, att.bandwidth.burst
        return {
            "in_rate": rate,
            "in_burst": burst,
            "out_rate": rate,
            "out_burst": burst,
            "in_bytes": in_bytes,
            "in_dropped": in_dropped,
            "out_bytes": out_bytes,
            "out_dropped": out_dropped,
        }

    def bandwidth(self, container: ContainerView) -> Any:
        """The bandwidth limit in force (None: none)."""
        att = self.attachment(container)
        return att.bandwidth and att.bandwidth.to_json()

    def _record(self, container: ContainerView, att: Attachment) -> None:
        state = container.plugin_state(NAME)
        state.clear()
        state.update(att.to_state())

    def _save(self, container: ContainerView, att: Attachment) -> None:
        self._record(container, att)
        container.save()

    # -- commands -------------------------------------------------------------------

    def attachment(self, container: ContainerView) -> Attachment:
        """The container's attachment, or InvalidState when it has no network."""
        att = self.attachments.get(container.handle)
        if att is None and not self.wanted(container):
            raise InvalidState(
                f'container {container.handle}: has no network (created with "network": "none")'
            )
        if att is None or att.closed:
            raise InvalidState(f"container {container.handle}: has no network (being destroyed?)")
        return att

    async def forward(
        self,
        container: ContainerView,
        host_port: int | None,
        container_port: int | None,
        host_address: IPv4Address | None = None,
    ) -> Forward:
        """Forward a host TCP port, of *host_address* or of every local address, to the
        container (``net in``).

        Raises:
            NoCapacity: no port of the range is free.
            InvalidRequest: *host_port* is already forwarded.
        """
        async with self._rules_lock:
            att = self.attachment(container)
            try:
                if host_port is None:
                    host_port = self.ports.allocate()
                else:
                    self.ports.reserve(host_port)
            except NoCapacity as exc:
                raise NoCapacity(f"net in: container {container.handle}: {exc.message}") from None
            except InvalidRequest as exc:
                raise InvalidRequest(f"net in: {exc.message}") from None
            forward = Forward(host_port, container_port or host_port, host_address)
            try:
                await self.firewall.apply(
                    self.ruleset.forward(att.handle, forward, att.lease.address),
                    f"forward port {host_port} to container {att.handle}",
                )
            except BaseException:
                self.ports.release(host_port)
                raise
            att.forwards.append(forward)
            self._save(container, att)
        container.log.info("port forwarded", **forward.to_json())
        await container.publish(NetRuleChanged(container.handle, "in", forward.to_json()))
        return forward

    async def allow(self, container: ContainerView, allow: Egress) -> None:
        """Let the container reach one destination (``net out``); asking twice is harmless."""
        async with self._rules_lock:
            att = self.attachment(container)
            if allow in att.egress:
                return
            await self.firewall.apply(
                self.ruleset.egress(att.handle, att.ingress, att.lease.address, allow),
                f"allow egress of container {att.handle}",
            )
            att.egress.append(allow)
            self._save(container, att)
        container.log.info("egress allowed", **allow.to_json())
        await container.publish(NetRuleChanged(container.handle, "out", allow.to_json()))

    async def unforward(self, container: ContainerView, host_port: int | None) -> None:
        """Remove the container's forward of *host_port* (``net in`` with ``revoke``).

        Raises:
            InvalidRequest: the container forwards no such port.
        """
        async with self._rules_lock:
            att = self.attachment(container)
            kept = [f for f in att.forwards if f.host_port != host_port]
            if len(kept) == len(att.forwards):
                raise InvalidRequest(
                    f"net in: container {container.handle} forwards no host port {host_port}"
                )
            await self._replace_rules(att, kept, att.egress, f"unforward port {host_port}")
            att.forwards = kept
            self.ports.release(host_port)  # type: ignore[arg-type]
            self._save(container, att)
        container.log.info("port forward removed", host_port=host_port)
        await container.publish(
            NetRuleChanged(container.handle, "in", {"host_port": host_port, "revoked": True})
        )

    async def revoke(self, container: ContainerView, allow: Egress) -> None:
        """Remove a ``net out`` rule the container has, given as it was added.

        Raises:
            InvalidRequest: the container has no such rule.
        """
        async with self._rules_lock:
            att = self.attachment(container)
            if allow not in att.egress:
                raise InvalidRequest(
                    f"net out: container {container.handle} has no rule {allow.to_json()}"
                )
            kept = [e for e in att.egress if e != allow]
            await self._replace_rules(att, att.forwards, kept, "revoke egress")
            att.egress = kept
            self._save(container, att)
        container.log.info("egress revoked", **allow.to_json())
        await container.publish(
            NetRuleChanged(container.handle, "out", {**allow.to_json(), "revoked": True})
        )

    async def _replace_rules(
        self,
        att: Attachment,
        forwards: list[Forward],
        egress: list[Egress],
        what: str,
    ) -> None:
        """Make the container's rules exactly *forwards* and *egress*, in one transaction."""
        listing = await self.firewall.apply(self.ruleset.list_table(), "list its rules")
        await self.firewall.apply(
            self.ruleset.delete_tagged(listing, att.handle)
            + self.ruleset.container(att.handle, att.ingress, att.lease.address, forwards, egress),
            f"{what} of container {att.handle}",
        )

    def info(self, container: ContainerView) -> dict[str, Any]:
        """``host_ip``, ``container_ip``, ``net_stat`` (the traffic of its veth, as the
        container sees it), and its rules ``net_in`` and ``net_out`` (nothing when it has
        no network)."""
        att = self.attachments.get(container.handle)
        if att is None:
            return {}
        host_ip, container_ip = att.lease.texts
        return {
            "host_ip": host_ip,
            "container_ip": container_ip,
            "net_stat": links.container_traffic(att.device),
            "net_in": [f.to_json() for f in att.forwards],
            "net_out": [_rule_json(e) for e in att.egress],
            "limits": {"bandwidth": att.bandwidth and att.bandwidth.to_json()},
            "bandwidth_stat": None,  # with a limit, the plugin's info reads it (async)
        }

    def stats(self, containers: Sequence[ContainerView]) -> dict[str, dict[str, Any]]:
        """``net_stat`` of each of *containers* that has a network, from one read of
        ``/proc/net/dev`` for them all (see :func:`links.all_traffic`)."""
        devices = {
            c.handle: att.device
            for c in containers
            if (att := self.attachments.get(c.handle)) is not None
        }
        if not devices:
            return {}
        traffic = links.all_traffic(set(devices.values()))
        return {handle: {"net_stat": traffic[device]} for handle, device in devices.items()}

    # -- daemon lifetime --------------------------------------------------------------

    async def startup(self, live_handles: frozenset[str]) -> None:
        """Remove what belongs to no live container; (re)build the whole table in one transaction."""
        if not await trio.to_thread.run_sync(links.ip_forwarding):
            await trio.to_thread.run_sync(links.enable_ip_forwarding)
            log.warning("net.ipv4.ip_forward was 0; turned on for container traffic")
        live = [a for a in self.attachments.values() if a.handle in live_handles]
        wanted = {a.device for a in live} | {
            self.settings.bridge_device(name) for name, m in self.members.items() if m
        }
        prefix = self.settings.interface_prefix
        bridged = {a.device for a in live if a.bridge is not None}
        for device in await trio.to_thread.run_sync(links.devices, prefix):
            if device not in wanted:
                await links.delete_link(device)
                log.warning("leftover network device removed", device=device)
            else:  # made by an older daemon, maybe without today's settings (rp_filter)
                links.harden(device, route_localnet=device not in bridged)
        commands = self.ruleset.base()
        for name in sorted(self.made):
            if self.members.get(name):
                device = self.settings.bridge_device(name)
                commands += self.ruleset.bridge(device, self.bridges[name].network)
        for att in live:
            commands += self.ruleset.container(
                att.handle, att.ingress, att.lease.address, att.forwards, att.egress
            )
        await self.firewall.apply(commands, "build the table")
        log.info("network ready", table=self.settings.table, containers=len(live))

    async def shutdown(self) -> None:
        """Remove the table when no container is left (detached containers keep their rules)."""
        if not self.attachments:
            await self.firewall.apply(self.ruleset.delete_table(), "remove the table")
