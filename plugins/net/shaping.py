"""Bandwidth limits of a container: a token bucket on each end of its veth.

Traffic to the container leaves the host end of its veth, and traffic from it
leaves ``eth0``, the container end: a ``tbf`` qdisc as the root of each shapes
what leaves by it, so TCP sees a slower link rather than drops (policing would
drop). The container's jobs cannot lift their own: changing a qdisc takes
``CAP_NET_ADMIN``, which no job has. Both qdiscs go with the veth, so destroy
has nothing to remove. The requests are packed by :mod:`.netlink`; the
container end is reached through a NETLINK_ROUTE socket in its namespace.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netns import create_socket

from plugins.net import netlink
from supervisor.api import InvalidRequest

#: How long a packet may wait in a bucket's queue before it is dropped.
LATENCY_S = 0.05
#: Bytes of an Ethernet header: a bucket passes no frame larger than its burst.
ETHERNET_HEADER = 14
#: tbf keeps a rate in 32 bits of bytes per second.
MAX_RATE = 2**32 - 1
#: A burst's time at its rate is kept in 32 bits of 64 ns ticks (~274 s).
MAX_BURST_SECONDS = 60


@dataclass(frozen=True)
class Bandwidth:
    """A limit on each direction: *rate* bytes per second, bursts of up to *burst* bytes."""

    rate: int
    burst: int

    def to_json(self) -> dict[str, int]:
        return {"rate": self.rate, "burst": self.burst}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bandwidth:
        return cls(int(data["rate"]), int(data["burst"]))


def parse_bandwidth(value: Any, mtu: int) -> Bandwidth | None:
    """``{"rate": BYTES_PER_S, "burst": BYTES}``, or None for ``None`` or ``{}`` (no limit).

    Raises:
        InvalidRequest: naming the field and the reason.
    """
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or set(value) != {"rate", "burst"}:
        raise InvalidRequest(
            f'bandwidth must be {{"rate": BYTES_PER_SECOND, "burst": BYTES}} or {{}} (none), '
            f"got {value!r}"
        )
    rate, burst = value["rate"], value["burst"]
    for name, number in (("rate", rate), ("burst", burst)):
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_RATE:
            raise InvalidRequest(
                f"bandwidth: {name} {number!r} is not a number from 1 to {MAX_RATE}"
            )
    if burst < mtu + ETHERNET_HEADER:
        raise InvalidRequest(
            f"bandwidth: burst {burst} is smaller than a full frame ({mtu + ETHERNET_HEADER} bytes "
            "with [net] mtu): no such packet could pass"
        )
    if burst > rate * MAX_BURST_SECONDS:
        raise InvalidRequest(
            f"bandwidth: burst {burst} takes more than {MAX_BURST_SECONDS} s at rate {rate}"
        )
    return Bandwidth(rate, burst)


def bucket(index: int, bandwidth: Bandwidth) -> tuple[int, int, bytes]:
    """The request putting *bandwidth*'s token bucket on device *index*."""
    limit = min(int(bandwidth.rate * LATENCY_S) + bandwidth.burst, MAX_RATE)
    return netlink.new_tbf(index, bandwidth.rate, bandwidth.burst, limit)


async def shape(rtnl: netlink.RouteSocket, device: str, bandwidth: Bandwidth | None) -> None:
    """Put *bandwidth*'s bucket on *device* (in *rtnl*'s namespace), or (None) take it off.

    Raises:
        OSError: the kernel refused, or there is no such device.
    """
    index = rtnl.index_of(device)
    if bandwidth is not None:
        await rtnl.request(bucket(index, bandwidth))
        return
    try:
        await rtnl.request(netlink.delete_root_qdisc(index))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):  # none there
            raise


async def sent_and_dropped(rtnl: netlink.RouteSocket, device: str) -> tuple[int | None, int | None]:
    """(bytes sent, packets dropped) by *device*'s token bucket; Nones without one."""
    try:
        index = rtnl.index_of(device)
        found = netlink.root_qdisc_stats(await rtnl.dump(netlink.dump_qdiscs(index)), index)
    except OSError:
        return None, None
    if found is None or found[0] != "tbf":
        return None, None
    return found[1], found[2]


def route_socket_in(pid: int) -> socket.socket:
    """A NETLINK_ROUTE socket in the network namespace of process *pid* (blocking: made
    by a child process that enters it, as the daemon's threads never do)."""
    return create_socket(
        f"/proc/{pid}/ns/net",
        family=socket.AF_NETLINK,
        socket_type=socket.SOCK_RAW,
        proto=socket.NETLINK_ROUTE,
        flags=0,
    )
