"""Bandwidth limits of a container: token buckets on both directions of its veth.

Traffic to the container leaves the host end of its veth: a ``tbf`` qdisc there
shapes it. Traffic from the container enters the host by that device, where a
qdisc cannot delay it; an ``ingress`` qdisc's filter redirects it to an IFB
device of the container, and a ``tbf`` on the IFB's egress shapes it, so the
container's TCP sees a slower link, not drops (policing would drop). All of it
is made through pyroute2 and lives in the host's network namespace: the veth's
qdiscs go with the veth, the IFB is deleted at destroy.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from supervisor.api import InvalidRequest

#: How long a packet may wait in a bucket's queue before it is dropped.
LATENCY = "50ms"
ROOT, INGRESS = "1:", "ffff:"
ETH_P_ALL = 0x0003
#: Bytes of an Ethernet header: a bucket passes no frame larger than its burst.
ETHERNET_HEADER = 14
#: tbf keeps rates in 32 bits of bytes per second, and a burst's time at that rate in a tick count.
MAX_RATE = 2**32 - 1
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


def _bucket(bandwidth: Bandwidth) -> dict[str, Any]:
    return {"rate": f"{bandwidth.rate * 8}bit", "burst": bandwidth.burst, "latency": LATENCY}


def _ignore_missing(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        # ENOENT/EINVAL: no such qdisc; ENODEV: no such device
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def apply(device: str, ifb: str, bandwidth: Bandwidth) -> None:
    """Limit both directions of veth *device* (its IFB *ifb* made if missing); idempotent.

    Raises:
        NetlinkError: the kernel refused (e.g. the device is gone).
    """
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=device)[0]
        if not ipr.link_lookup(ifname=ifb):
            ipr.link("add", ifname=ifb, kind="ifb")
        ifb_index = ipr.link_lookup(ifname=ifb)[0]
        ipr.link("set", index=ifb_index, state="up")
        ipr.tc("replace", kind="tbf", index=index, handle=ROOT, **_bucket(bandwidth))
        ipr.tc("replace", kind="tbf", index=ifb_index, handle=ROOT, **_bucket(bandwidth))
        # Replaced whole, so that exactly one filter redirects.
        _ignore_missing(ipr.tc, "del", index=index, handle=INGRESS, parent=0xFFFFFFF1)
        ipr.tc("add", kind="ingress", index=index, handle=INGRESS)
        ipr.tc(
            "add-filter",
            kind="u32",
            index=index,
            parent=INGRESS,
            protocol=ETH_P_ALL,
            keys=["0x0/0x0+0"],  # every packet
            target=0x10001,  # a class id u32 insists on; the redirect decides
            action={
                "kind": "mirred",
                "direction": "egress",
                "action": "redirect",
                "ifindex": ifb_index,
            },
        )


def remove(device: str | None, ifb: str) -> None:
    """Lift the limits: the veth's qdiscs (when *device* is given and exists) and the IFB."""
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=device) if device else []
        for index in indexes:
            _ignore_missing(ipr.tc, "del", index=index, root=True)
            _ignore_missing(ipr.tc, "del", index=index, handle=INGRESS, parent=0xFFFFFFF1)
        for index in ipr.link_lookup(ifname=ifb):
            _ignore_missing(ipr.link, "del", index=index)


def _bucket_stats(ipr: IPRoute, device: str) -> tuple[int | None, int | None]:
    """(bytes sent, packets dropped) of the root tbf of *device*; (None, None) without one."""
    indexes = ipr.link_lookup(ifname=device)
    if not indexes:
        return None, None
    for qdisc in ipr.get_qdiscs(index=indexes[0]):
        if qdisc.get_attr("TCA_KIND") == "tbf" and qdisc["parent"] == 0xFFFFFFFF:
            stats = qdisc.get_attr("TCA_STATS2")
            basic, queue = stats.get_attr("TCA_STATS_BASIC"), stats.get_attr("TCA_STATS_QUEUE")
            return basic["bytes"], queue["drops"]
    return None, None


def stats(device: str, ifb: str, bandwidth: Bandwidth) -> dict[str, Any]:
    """``bandwidth_stat`` as Warden had it, with the bytes and drops of each bucket:
    ``in`` is traffic to the container, ``out`` from it."""
    with IPRoute() as ipr:
        in_bytes, in_dropped = _bucket_stats(ipr, device)
        out_bytes, out_dropped = _bucket_stats(ipr, ifb)
    return {
        "in_rate": bandwidth.rate,
        "in_burst": bandwidth.burst,
        "out_rate": bandwidth.rate,
        "out_burst": bandwidth.burst,
        "in_bytes": in_bytes,
        "in_dropped": in_dropped,
        "out_bytes": out_bytes,
        "out_dropped": out_dropped,
    }
