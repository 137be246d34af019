"""Network devices: veth pairs and bridges on the host (pyroute2), ``eth0`` inside a container.

A container's veth is made and deleted with requests on the daemon's one
:class:`~plugins.net.netlink.RouteSocket` (async, on every create's path). The
other functions block; the plugin calls them through ``trio.to_thread.run_sync``,
each with an ``IPRoute`` of its own. The daemon never enters a container's
namespace (``setns`` in a threaded process moves only one thread, see
DESIGN.md): the container end of a veth is created directly in the
container's namespace (``net_ns_fd``) and configured with rtnetlink requests
on a socket the launcher opened in that namespace, or, for a namespace that
came without one (a veth re-created after a restart), by the container's init
(see ``Sandbox.configure_interface``).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network
from pathlib import Path

import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from plugins.net import netlink
from plugins.net.pool import Lease
from plugins.net.shaping import Bandwidth, bucket
from supervisor.api import CorralError

#: Name of the container end of every veth, inside the container.
CONTAINER_IFNAME = "eth0"
MAIN_TABLE = 254

_rtnl = netlink.RouteSocket()


class LinkError(CorralError):
    """A device could not be created or configured."""


@contextmanager
def _netlink(what: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise LinkError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
    except OSError as exc:  # a sysctl of the device
        raise LinkError(f"{what}: {exc}") from exc


def _sysctl(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def harden(device: str, route_localnet: bool) -> None:
    """Set the sysctls of a host-side device again (one made by an older daemon).

    Raises:
        LinkError: naming the device.
    """
    try:
        _device_sysctls(device, route_localnet)
    except OSError as exc:
        raise LinkError(f"device {device}: {exc}") from exc


def _device_sysctls(device: str, route_localnet: bool) -> None:
    # No IPv6 on Corral's host-side devices: a link-local address would let a
    # container reach the host's services around the IPv4 input rules.
    _sysctl(f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6", "1")
    # Strict reverse-path filtering: a packet from this device whose source address
    # is not routed back through it (another container's, the host's, anyone's) is
    # dropped, so a job with CAP_NET_RAW cannot forge its source. The kernel takes
    # the larger of this and conf/all: the host's own setting is left alone.
    _sysctl(f"/proc/sys/net/ipv4/conf/{device}/rp_filter", "1")
    if route_localnet:
        # Lets `net in` DNAT host traffic sent to 127.0.0.1 out of this device
        # (the source is then masqueraded, see rules.py); this device only.
        _sysctl(f"/proc/sys/net/ipv4/conf/{device}/route_localnet", "1")


@contextmanager
def network_namespace_of(pid: int) -> Iterator[int]:
    """An fd of the network namespace of process *pid*, for :func:`create_veth`."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LinkError(f"network namespace of process {pid}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


async def create_veth(device: str, netns: int, lease: Lease, bridge: str | None, mtu: int) -> None:
    """Create the veth pair of a container and set up its host end.

    The container end is made directly inside the network namespace *netns* (an fd) as ``eth0``
    (down, unconfigured: see :func:`configure_container_end`, or the container's init). The
    host end *device* gets the gateway address, or joins *bridge* (whose own address is the
    gateway), and is up. Both ends have the MTU *mtu*.

    Raises:
        LinkError: naming the device and the kernel's reason; nothing is left behind
            (a device of that name that existed before is not touched).
    """
    what = f"veth {device}"
    # One request makes the pair, moves the peer, enslaves and raises the host end.
    # The host end has no carrier (nor an IPv6 address) until eth0 is raised.
    master = None if bridge is None else _index(bridge, what)
    await _request(what, netlink.new_veth(device, CONTAINER_IFNAME, netns, master, mtu))
    try:
        _device_sysctls(device, route_localnet=bridge is None)
        if bridge is None:
            index = _index(device, what)
            await _request(what, netlink.new_address(index, str(lease.gateway), lease.prefixlen))
    except BaseException:
        with trio.CancelScope(shield=True):
            await delete_link(device)
        raise


async def configure_container_end(
    device: str, route_socket: int, lease: Lease, bandwidth: Bandwidth | None = None
) -> None:
    """Give ``eth0``, the container end of veth *device*, the lease's address (and the
    token bucket of *bandwidth*), raise it and route by the lease's gateway, with
    rtnetlink requests on *route_socket* (a NETLINK_ROUTE socket opened in the
    container's network namespace).

    Raises:
        LinkError: naming the device and the kernel's reason; the veth is deleted.
    """
    rtnl = netlink.RouteSocket(route_socket)
    try:
        index = rtnl.index_of(CONTAINER_IFNAME)
        # The bucket before the device is up: replacing the qdisc of a running device
        # waits for its transmissions to stop.
        shaped = [] if bandwidth is None else [bucket(index, bandwidth)]
        await rtnl.request(
            netlink.new_address(index, str(lease.address), lease.prefixlen),
            *shaped,
            netlink.set_up(index),
            netlink.new_default_route(str(lease.gateway)),
        )
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            await delete_link(device)
        if isinstance(exc, OSError):
            raise LinkError(f"{CONTAINER_IFNAME} of veth {device}: {exc.strerror}") from exc
        raise
    finally:
        rtnl.close()


def host_route_socket() -> netlink.RouteSocket:
    """The daemon's route socket in the host's network namespace."""
    return _rtnl


async def delete_link(device: str) -> bool:
    """Delete *device* (a veth goes with its peer); False if it did not exist."""
    try:
        await _rtnl.request(netlink.delete_link(device))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise LinkError(f"delete {device}: {exc.strerror}") from exc
    return True


async def _request(what: str, message: tuple[int, int, bytes]) -> None:
    try:
        await _rtnl.request(message)
    except OSError as exc:
        raise LinkError(f"{what}: {exc.strerror}") from exc


def _index(device: str, what: str) -> int:
    try:
        return socket.if_nametoindex(device)
    except OSError as exc:
        raise LinkError(f"{what}: no device {device}") from exc


def ensure_bridge(device: str, gateway_cidr: str, mtu: int) -> None:
    """Create bridge *device* with the gateway address and MTU *mtu*, unless it exists already."""
    with _netlink(f"bridge {device}") as ipr:
        if ipr.link_lookup(ifname=device):
            return
        ipr.link("add", ifname=device, kind="bridge", mtu=mtu)
        try:
            index = ipr.link("get", ifname=device)[0]["index"]
            _device_sysctls(device, route_localnet=True)
            address, prefixlen = gateway_cidr.split("/")
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
            ipr.link("set", index=index, state="up")
        except BaseException:
            _delete(ipr, device)
            raise


def _delete(ipr: IPRoute, device: str) -> bool:
    try:
        ipr.link("del", ifname=device)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise
    return True


def exists(device: str) -> bool:
    """Whether *device* exists on the host."""
    with _netlink(f"look up {device}") as ipr:
        return bool(ipr.link_lookup(ifname=device))


def devices(prefix: str) -> list[str]:
    """Names of the host's devices starting with *prefix*."""
    with _netlink("list devices") as ipr:
        names = (link.get("ifname") for link in ipr.get_links())
        return sorted(n for n in names if n and n.startswith(prefix))


def host_networks(ignore_prefix: str) -> list[tuple[str, IPv4Network]]:
    """IPv4 networks the host already uses (addresses and main-table routes), by device.

    Devices whose name starts with *ignore_prefix* (this daemon's own) are left out.
    The default route is left out too: it overlaps everything.
    """
    with _netlink("list addresses") as ipr:
        names = {link["index"]: link.get("ifname") or "?" for link in ipr.get_links()}
        found = []
        for addr in ipr.get_addr(family=2):
            name = names.get(addr["index"], "?")
            if not name.startswith(ignore_prefix):
                net = IPv4Network(f"{addr.get('address')}/{addr['prefixlen']}", strict=False)
                found.append((name, net))
        for route in ipr.get_routes(family=2, table=MAIN_TABLE):
            name = names.get(route.get("oif"), "?")
            if route["dst_len"] and not name.startswith(ignore_prefix):
                found.append((name, IPv4Network(f"{route.get('dst')}/{route['dst_len']}")))
        return found


#: Where a veth's counters are: veths are virtual devices, and this path skips resolving
#: the symlink ``/sys/class/net/DEV`` (a third of the cost of reading them).
_STATISTICS = "/sys/devices/virtual/net/{}/statistics/"
#: ``net_stat`` keys as the container sees its traffic, with the host end's counter
#: each one is: what the host end receives, the container sent.
NET_STAT = (
    ("rx_bytes", "tx_bytes"),
    ("tx_bytes", "rx_bytes"),
    ("rx_packets", "tx_packets"),
    ("tx_packets", "rx_packets"),
)


def container_traffic(device: str) -> dict[str, int | None]:
    """The traffic of the container whose veth's host end is *device*, from the container's
    side (``rx_bytes`` is what it received): its host end's counters, swapped.

    Four small reads of sysfs (about 25 µs in all), on the event loop: ``info`` is a hot
    path, and a worker thread's round trip costs more. The counters are kept by the
    kernel without the RTNL lock, so this never waits for a device being made or
    deleted. Every value is None when the device is gone (a container whose init
    died, a veth not re-created yet).
    """
    base = _STATISTICS.format(device)
    out: dict[str, int | None] = {}
    try:
        for key, counter in NET_STAT:
            fd = os.open(base + counter, os.O_RDONLY | os.O_CLOEXEC)
            try:
                out[key] = int(os.read(fd, 32))
            finally:
                os.close(fd)
    except (OSError, ValueError):
        return dict.fromkeys(key for key, _ in NET_STAT)
    return out


#: Every device of the daemon's network namespace and its counters, one line each.
PROC_NET_DEV = "/proc/net/dev"
#: Positions of the host end's counters after ``DEV:`` in a line of it (receive: bytes,
#: packets, errs, drop, fifo, frame, compressed, multicast; then transmit: bytes, packets...).
_PROC_NET_DEV_FIELDS = {"rx_bytes": 0, "rx_packets": 1, "tx_bytes": 8, "tx_packets": 9}


def all_traffic(devices: set[str]) -> dict[str, dict[str, int | None]]:
    """:func:`container_traffic` of each of *devices*, from one read of ``/proc/net/dev``.

    The same counters as sysfs (both are the kernel's ``dev_get_stats``), for
    every device at once: one file instead of four per device. A device not
    listed (gone) has every value None.
    """
    with open(PROC_NET_DEV, "rb") as f:
        text = f.read()
    out: dict[str, dict[str, int | None]] = {}
    for line in text.splitlines()[2:]:  # two lines of headers
        name, _, counters = line.partition(b":")
        device = name.strip().decode()
        if device not in devices:
            continue
        numbers = counters.split()
        try:
            host = {key: int(numbers[i]) for key, i in _PROC_NET_DEV_FIELDS.items()}
        except (IndexError, ValueError):
            continue
        out[device] = {key: host[counter] for key, counter in NET_STAT}
    gone = dict.fromkeys(key for key, _ in NET_STAT)
    return {device: out.get(device, dict(gone)) for device in devices}


def ip_forwarding() -> bool:
    """Whether the host routes IPv4 (``net.ipv4.ip_forward``)."""
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"


def enable_ip_forwarding() -> None:
    """Turn on IPv4 routing on the host, which containers' traffic needs."""
    _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
