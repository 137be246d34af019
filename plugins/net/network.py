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
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import structlog
import trio

from plugins.net import links, netlink, shaping
from plugins.net.firewall import Firewall
from plugins.net.pool import AddressPool, BridgePool, Lease, PortPool, SlotPool, SubnetPool
from plugins.net.rules import Egress, Forward, Ruleset
from plugins.net.settings import MAX_IDS, NAME, Settings
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

NETWORK_KEYS = ("address", "bridge", "bandwidth")


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
    #: Configured bridge name, or None for a /30 of the pool.
    bridge: str | None
    lease: Lease
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
            forwards=[Forward.from_json(f) for f in data.get("forwards", [])],
            egress=[Egress.from_json(e) for e in data.get("egress", [])],
            bandwidth=shaping.Bandwidth.from_json(bw) if (bw := data.get("bandwidth")) else None,
        )


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
        #: Handles of the containers on each bridge (a bridge exists while it has members).
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
        if not isinstance(value, dict) or set(value) - set(NETWORK_KEYS):
            raise InvalidRequest(
                'network: must be an object with "address": "A.B.C.D[/NN]", "bridge": NAME '
                'and/or "bandwidth": {"rate": BYTES_PER_SECOND, "burst": BYTES}'
            )
        try:
            bandwidth = shaping.parse_bandwidth(value.get("bandwidth"), self.settings.mtu)
        except InvalidRequest as exc:
            raise InvalidRequest(f"network: {exc.message}") from None
        return {**self._check_address(value), "bandwidth": bandwidth and bandwidth.to_json()}

    def _check_address(self, value: dict[str, Any]) -> dict[str, Any]:
        bridge = value.get("bridge")
        if bridge is not None and bridge not in self.bridges:
            known = ", ".join(sorted(self.bridges)) or "none"
            raise InvalidRequest(f"network: unknown bridge {bridge!r} (configured: {known})")
        address = value.get("address")
        if address is None:
            return {"address": None, "bridge": bridge}
        try:
            interface = IPv4Interface(address) if isinstance(address, str) else None
        except ValueError:
            interface = None
        if interface is None:
            raise InvalidRequest(
                f"network: address {address!r} is not an IPv4 address A.B.C.D[/NN]"
            )
        ip = interface.ip
        if bridge is None:
            # An address of a bridge subnet puts the container on that bridge.
            bridge = next((n for n, p in self.bridges.items() if ip in p.network), None)
        pool = self._pool(bridge)
        if ip not in pool.network:
            raise InvalidRequest(
                f"network: address {ip} is not in the address pool {self.subnets.network}"
                + "".join(f" nor in bridge {n} ({p.network})" for n, p in self.bridges.items())
            )
        expected = pool.lease(0).prefixlen
        if "/" in address and interface.network.prefixlen != expected:
            raise InvalidRequest(
                f"network: address {address}: the prefix length here is /{expected}"
            )
        try:
            pool.slot_of(ip)
        except InvalidRequest as exc:
            raise InvalidRequest(f"network: {exc.message}") from None
        return {"address": str(ip), "bridge": bridge}

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
        pool = self._pool(bridge)
        try:
            lease = pool.reserve(IPv4Address(address)) if address else pool.allocate()
        except InvalidRequest as exc:
            raise InvalidRequest(f"network: {exc.message}") from None
        except NoCapacity as exc:
            raise NoCapacity(f"container {container.handle}: {exc.message}") from None
        try:
            ident = self.ids.allocate()
        except BaseException:
            pool.release(lease, quarantine=False)
            raise
        device = self.settings.veth_name(ident)
        ingress = device if bridge is None else self.settings.bridge_device(bridge)
        bandwidth = options.get("bandwidth")
        att = Attachment(container.handle, ident, device, ingress, bridge, lease)
        att.bandwidth = shaping.Bandwidth.from_json(bandwidth) if bandwidth else None
        self.attachments[att.handle] = att
        # Saved with the container's next record. A daemon that dies before that
        # leaves nothing to give back: the pool lives in memory, and the veth goes
        # with the container's network namespace when its init is killed.
        self._record(container, att)
        return att

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
                await trio.to_thread.run_sync(
                    links.ensure_bridge, bridge_device, att.lease.gateway_cidr, self.settings.mtu
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
        if att.bridge is not None:
            async with self._bridge_lock:
                members = self.members.setdefault(att.bridge, set())
                members.discard(att.handle)
                if not members:
                    device = self.settings.bridge_device(att.bridge)
                    try:
                        await links.delete_link(device)
                    except Exception:
                        log.exception("unused bridge not deleted", device=device)
        try:
            self._pool(att.bridge).release(att.lease, quarantine)
        except (InvalidRequest, KeyError):
            pass  # the pool or bridge changed in the config; nothing to give back
        # A device name waits too: its veth may still be on its way out (see release).
        self.ids.release(att.ident, quarantine=quarantine)
        for forward in att.forwards:
            self.ports.release(forward.host_port)
        if self.attachments.get(att.handle) is att:
            del self.attachments[att.handle]

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
