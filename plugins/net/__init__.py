"""Network plugin: an address, a veth and firewall rules for every container.

Each container gets a /30 of the address pool (host end .1, container .2) or an
address on a shared bridge, a veth pair whose container end is ``eth0`` with
the host as default gateway, and the rules of one nftables table owned by this
daemon: egress denied by default (``net out`` opens a destination), host ports
forwarded with DNAT (``net in``), outbound NAT for Corral's own subnets only.
See README.md here for the config keys and what the rules do.

The address is reserved at prepare, and the veth made and ``eth0`` configured as
soon as the launch plugin has made the container's network namespace
(``LaunchPlan.network_namespace``, a channel from the launch plugin), while
the container's init still sets up.

Modules: :mod:`.settings` (the ``[net]`` table), :mod:`.pool` (address, port and
name pools, pure), :mod:`.rules` (the nftables JSON, pure), :mod:`.firewall`
(applying it), :mod:`.links` (devices), :mod:`.network` (keeping it all consistent).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ipaddress import IPv4Address
from typing import Any

import trio

from plugins.net import links
from plugins.net.claim import claim
from plugins.net.dns import resolv_conf
from plugins.net.network import Attachment, Network
from plugins.net.rules import parse_egress
from plugins.net.settings import NAME, Settings
from plugins.net.sysctl import PING_GROUP_RANGE, start_in_namespace
from supervisor.api import (
    Args,
    ConfigError,
    ContainerView,
    Handler,
    InvalidRequest,
    LaunchPlan,
    Limit,
    Mount,
    NetworkNamespace,
    Request,
    StashKey,
    context_nursery,
    hookimpl,
)

IN_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "host_port": int,
    "container_port": int,
    "host_address": str,
    "revoke": bool,
}
OUT_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "protocol": str,
    "icmp_type": int,
    "icmp_code": int,
    "log": bool,
    "revoke": bool,
}
RESOLV_CONF = "/etc/resolv.conf"


class _EarlyVeth:
    """A new container's network, set up at prepare once its network namespace exists:
    its sysctls, and its veth (none with ``"network": "none"``)."""

    def __init__(self, network: Network, att: Attachment | None) -> None:
        self.network = network
        #: Held here until attach takes it; given back at prepare's exit if never taken.
        self.att: Attachment | None = att
        self.plumbed = False
        self.error: Exception | None = None
        self.done = trio.Event()

    async def make(self, namespace: Callable[[], Awaitable[NetworkNamespace | None]]) -> None:
        try:
            netns = await namespace()
            if netns is not None:
                # `ping` for every user, as under Docker (unprivileged ICMP echo sockets).
                sysctls = start_in_namespace(netns.fd, PING_GROUP_RANGE)
                try:
                    if self.att is not None:
                        await self.network.plumb(self.att, netns.fd, netns.route_socket)
                        self.plumbed = True
                finally:
                    with trio.CancelScope(shield=True):
                        await sysctls()
        except Exception as exc:  # attach reports it
            self.error = exc
        finally:
            self.done.set()

    async def take(self) -> tuple[Attachment | None, bool]:
        """The attachment (None: no network), and whether its veth is made and configured
        (no namespace came: not yet)."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        att, self.att = self.att, None
        return att, self.plumbed


#: A new container's veth made at prepare, until attach takes it.
EARLY = StashKey[_EarlyVeth]()


class NetworkPlugin:
    """The built-in ``net`` plugin (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        #: Held for the daemon's life: one daemon per table and device prefix.
        self.claims = claim(settings.table, settings.interface_prefix)
        try:
            used = links.host_networks(settings.interface_prefix)
            self.network = Network(settings)
        except OSError as exc:
            raise ConfigError(f"[{NAME}] {exc}") from None
        ours = [("pool", settings.pool)] + [
            (f"bridges.{n}", s) for n, s in settings.bridges.items()
        ]
        for key, subnet in ours:
            for device, net in used:
                if subnet.overlaps(net):
                    # Routing it would hijack or break the host's own networking.
                    raise ConfigError(
                        f"[{NAME}] {key}: {subnet} overlaps {net} of host device {device}; "
                        "choose a subnet the host does not use"
                    )

    @hookimpl
    def corral_startup(self, live_handles: frozenset[str]) -> Awaitable[None]:
        return self.network.startup(live_handles)

    @hookimpl
    def corral_shutdown(self) -> Awaitable[None]:
        return self.network.shutdown()

    @hookimpl
    def corral_create_options(self) -> Mapping[str, Any]:
        return {"network": self.network.check_options}

    @hookimpl
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._early_veth(container, plan, restoring)

    @asynccontextmanager
    async def _early_veth(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        wanted = self.network.wanted(container)
        if not restoring and wanted:
            plan.mounts.append(self._resolv_conf_mount(container))
        namespace = plan.network_namespace
        if restoring or namespace is None:
            yield  # attach does it all
            return
        early = _EarlyVeth(self.network, self.network.reserve(container) if wanted else None)
        container.stash[EARLY] = early
        try:
            async with context_nursery() as nursery:
                nursery.start_soon(early.make, namespace)
                yield
                nursery.cancel_scope.cancel()
        finally:
            container.stash.pop(EARLY, None)
            if early.att is not None:  # a later phase failed before attach took it
                with trio.CancelScope(shield=True):
                    await self.network.abandon(container, early.att, made=early.plumbed)

    def _resolv_conf_mount(self, container: ContainerView) -> Mount:
        """The container's /etc/resolv.conf: a file of its depot directory, bound read-only
        (a dangling symlink in the rootfs's place is left alone)."""
        path = container.path / "resolv.conf"
        path.write_text(resolv_conf(self.network.settings.nameservers))
        flags = ("bind", "mkfile", "optional", "ro", "nosuid", "nodev", "noexec")
        return Mount("none", str(path), RESOLV_CONF, flags)

    @hookimpl
    def corral_container_attach(
        self, container: ContainerView, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._attached(container, restoring)

    @asynccontextmanager
    async def _attached(self, container: ContainerView, restoring: bool) -> AsyncIterator[None]:
        net = self.network
        early = container.stash.get(EARLY, None)
        if restoring:
            await net.restore(container)
        elif early is not None:
            att, plumbed = await early.take()
            if att is not None:
                await net.attach(container, att, plumbed)
        elif net.wanted(container):
            await net.attach(container)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await net.release(container)

    @hookimpl
    def corral_container_info(
        self, container: ContainerView
    ) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]]:
        info = self.network.info(container)
        if info.get("limits", {}).get("bandwidth"):
            return self._with_bandwidth_stat(container, info)
        return info

    async def _with_bandwidth_stat(
        self, container: ContainerView, info: dict[str, Any]
    ) -> Mapping[str, Any]:
        return {**info, "bandwidth_stat": await self.network.bandwidth_stat(container)}

    @hookimpl
    def corral_limit_resources(self) -> Mapping[str, Limit]:
        return {"bandwidth": _BandwidthLimit(self.network)}

    @hookimpl
    def corral_containers_stats(
        self, containers: Sequence[ContainerView]
    ) -> Mapping[str, Mapping[str, Any]]:
        return self.network.stats(containers)

    @hookimpl
    def corral_commands(self) -> Mapping[str, Handler]:
        return {"net": self.net}

    async def net(self, request: Request, *args: Any) -> Any:
        """``["net", HANDLE, "in", OPTS?]`` or ``["net", HANDLE, "out", "ADDR[/MASK][:PORT[-PORT]]", OPTS?]``."""
        if len(args) >= 2 and args[1] == "in":
            a = Args("net in", list(args), ("HANDLE", "DIRECTION", "OPTS"))
            container = request.container(a.string(0))
            container.require("net in")
            opts = a.options(2, IN_OPTIONS)
            if opts.get("revoke"):
                if opts.get("host_port") is None:
                    raise InvalidRequest("net in: revoke needs the host_port of the forward")
                await self.network.unforward(container, _port(opts, "host_port"))
                return "ok"
            forward = await self.network.forward(
                container,
                _port(opts, "host_port"),
                _port(opts, "container_port"),
                _host_address(opts.get("host_address")),
            )
            return forward.to_json()
        if len(args) >= 2 and args[1] == "out":
            a = Args("net out", list(args), ("HANDLE", "DIRECTION", "DESTINATION", "OPTS"))
            container = request.container(a.string(0))
            container.require("net out")
            destination = a.string(2)
            opts = a.options(3, OUT_OPTIONS)
            allow = parse_egress(
                destination,
                opts.get("protocol", "all"),
                opts.get("icmp_type"),
                opts.get("icmp_code"),
                opts.get("log", False),
            )
            if opts.get("revoke"):
                await self.network.revoke(container, allow)
            else:
                await self.network.allow(container, allow)
            return "ok"
        a = Args("net", list(args), ("HANDLE", "DIRECTION", "ARG", "OPTS"))
        a.string(0)
        raise InvalidRequest(f'net: DIRECTION must be "in" or "out", got {a.value(1, True)!r}')


class _BandwidthLimit:
    """``limit HANDLE bandwidth {"rate": BYTES_PER_SECOND, "burst": BYTES}`` (``{}`` lifts it)."""

    def __init__(self, network: Network) -> None:
        self.network = network

    async def read(self, container: ContainerView) -> Any:
        return self.network.bandwidth(container)

    async def write(self, container: ContainerView, value: Any) -> Any:
        return await self.network.set_bandwidth(container, value)


def _host_address(value: str | None) -> IPv4Address | None:
    """An IPv4 address of this host (to forward only its port), or None."""
    if value is None:
        return None
    try:
        address = IPv4Address(value)
    except ValueError:
        raise InvalidRequest(f"net in: host_address {value!r} is not an IPv4 address") from None
    with socket.socket() as probe:  # binds only to an address the host has
        try:
            probe.bind((str(address), 0))
        except OSError as exc:
            raise InvalidRequest(
                f"net in: host_address {value} is not an address of this host ({exc.strerror})"
            ) from None
    return address


def _port(opts: dict[str, Any], key: str) -> int | None:
    value = opts.get(key)
    if value is not None and not 1 <= value <= 65535:
        raise InvalidRequest(f"net in: {key} {value} is not a port from 1 to 65535")
    return value
