"""rtnetlink requests over one socket the daemon keeps, awaited with trio.

Making a container's veth is on the path of every create. pyroute2's
``IPRoute`` cost about 2 ms per container there (a socket, an event loop and
request filters each time, in a worker thread), and encoding a message with
pyroute2's classes alone 0.2 ms. The few messages of that path are packed here
(the layouts are the kernel's ``<linux/rtnetlink.h>``) and go over one trio
socket, one request at a time, each waiting for its acknowledgement. Dumps
(listing devices and addresses at start-up) stay with pyroute2 in :mod:`.links`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

import trio
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELQDISC,
    RTM_GETQDISC,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP
from pyroute2.netlink.rtnl.tcmsg import tcmsg

#: struct nlmsghdr: length, type, flags, sequence number, port id.
_HEADER = struct.Struct("=IHHII")
#: struct ifinfomsg: family, type, index, flags, change.
_IFINFO = struct.Struct("=BxHiII")
#: struct ifaddrmsg: family, prefix length, flags, scope, index.
_IFADDR = struct.Struct("=BBBBI")
#: struct rtmsg: family, dst/src length, tos, table, protocol, scope, type, flags.
_RTMSG = struct.Struct("=BBBBBBBBI")
#: struct tcmsg: family, interface index, handle, parent, info.
_TCMSG = struct.Struct("=BxxxiIII")
#: struct tc_tbf_qopt: rate and peak rate (struct tc_ratespec: cell_log, linklayer,
#: overhead, cell_align, mpu, rate), limit, buffer, mtu.
_TBF_QOPT = struct.Struct("=BBHhHI BBHhHI III")
#: struct ifreq with an int (ifr_ifindex), for SIOCGIFINDEX.
_IFREQ_INDEX = struct.Struct("=16si20x")
SIOCGIFINDEX = 0x8933
_ERROR_CODE = struct.Struct("=i")
_U32 = struct.Struct("=I")

IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 4, 10, 18, 28
IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 31, 32
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
NLA_F_NESTED = 0x8000
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_BURST = 1, 6
TC_H_ROOT = 0xFFFFFFFF
TC_LINKLAYER_ETHERNET = 1
#: Nanoseconds per tick of the packet scheduler's clock (PSCHED_SHIFT 6).
PSCHED_TICK_NS = 64


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (struct rtattr), padded to 4 bytes."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _one_queue() -> bytes:
    # A veth gets a queue per possible CPU unless told otherwise, and the kernel
    # then cuts it down to one, waiting for an expedited RCU grace period per
    # end (synchronize_net under the RTNL lock): most of a veth's creation time.
    return _attr(IFLA_NUM_TX_QUEUES, _U32.pack(1)) + _attr(IFLA_NUM_RX_QUEUES, _U32.pack(1))


def new_veth(
    device: str, peer: str, peer_netns: int, master: int | None, mtu: int
) -> tuple[int, int, bytes]:
    """RTM_NEWLINK: veth *device*, up, its *peer* made in the network namespace *peer_netns* (an fd).

    Each end has one queue (``ip link add ... numtxqueues 1 numrxqueues 1``) and the MTU *mtu*.
    """
    peer_info = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer))
    peer_info += _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns)) + _one_queue()
    peer_info += _attr(IFLA_MTU, _U32.pack(mtu))
    data = _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_info)
    link_info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, _name(device))
    body += _one_queue() + _attr(IFLA_MTU, _U32.pack(mtu))
    body += _attr(IFLA_LINKINFO | NLA_F_NESTED, link_info)
    if master is not None:
        body += _attr(IFLA_MASTER, _U32.pack(master))
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body


def new_address(index: int, address: str, prefixlen: int) -> tuple[int, int, bytes]:
    """RTM_NEWADDR: IPv4 *address*/*prefixlen* on device *index*."""
    packed = socket.inet_aton(address)
    body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index)
    body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body


def set_up(index: int) -> tuple[int, int, bytes]:
    """RTM_NEWLINK: bring device *index* up."""
    return RTM_NEWLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)


def new_default_route(gateway: str) -> tuple[int, int, bytes]:
    """RTM_NEWROUTE: the IPv4 default route by *gateway* in the main table."""
    body = _RTMSG.pack(
        socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
    )
    return (
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        body + _attr(RTA_GATEWAY, socket.inet_aton(gateway)),
    )


def new_tbf(index: int, rate: int, burst: int, limit: int) -> tuple[int, int, bytes]:
    """RTM_NEWQDISC: a token bucket (``tbf``) as the root qdisc of device *index*, replacing
    any: *rate* bytes per second, bursts of *burst* bytes, at most *limit* bytes queued."""
    buffer_ticks = burst * 1_000_000_000 // rate // PSCHED_TICK_NS
    qopt = _TBF_QOPT.pack(
        0, TC_LINKLAYER_ETHERNET, 0, 0, 0, rate, 0, 0, 0, 0, 0, 0, limit, buffer_ticks, 0
    )
    options = _attr(TCA_TBF_PARMS, qopt) + _attr(TCA_TBF_BURST, _U32.pack(burst))
    body = _TCMSG.pack(socket.AF_UNSPEC, index, 0x10000, TC_H_ROOT, 0)
    body += _attr(TCA_KIND, _name("tbf")) + _attr(TCA_OPTIONS | NLA_F_NESTED, options)
    return RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body


def delete_root_qdisc(index: int) -> tuple[int, int, bytes]:
    """RTM_DELQDISC: the root qdisc of device *index* (the device's default comes back)."""
    return RTM_DELQDISC, 0, _TCMSG.pack(socket.AF_UNSPEC, index, 0, TC_H_ROOT, 0)


def root_qdisc_stats(messages: list[bytes], index: int) -> tuple[str, int, int] | None:
    """(kind, bytes sent, packets dropped) of the root qdisc of device *index* in the
    RTM_NEWQDISC messages of a dump; None if it has none listed."""
    for data in messages:
        msg = tcmsg(data)
        msg.decode()
        if msg["index"] == index and msg["parent"] == TC_H_ROOT:
            stats = msg.get_attr("TCA_STATS2")
            basic, queue = stats.get_attr("TCA_STATS_BASIC"), stats.get_attr("TCA_STATS_QUEUE")
            return str(msg.get_attr("TCA_KIND")), int(basic["bytes"]), int(queue["drops"])
    return None


def dump_qdiscs(index: int) -> tuple[int, int, bytes]:
    """RTM_GETQDISC dump (of device *index*, where the kernel filters by it)."""
    return RTM_GETQDISC, NLM_F_DUMP, _TCMSG.pack(socket.AF_UNSPEC, index, 0, 0, 0)


def delete_link(device: str) -> tuple[int, int, bytes]:
    """RTM_DELLINK of *device* by name."""
    return (
        RTM_DELLINK,
        0,
        _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(device)),
    )


class RouteSocket:
    """A NETLINK_ROUTE socket opened on first use; requests are serialized.

    Given *fd*, a NETLINK_ROUTE socket opened in another network namespace (a
    container's), it works on a duplicate of that socket, in that namespace.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._sock: trio.socket.SocketType | None = None
        if fd is not None:
            self._sock = trio.socket.from_stdlib_socket(socket.socket(fileno=os.dup(fd)))
        self._lock = trio.Lock()
        self._sequence = 0

    def index_of(self, device: str) -> int:
        """The index of *device* in the socket's network namespace.

        Raises:
            OSError: no such device (ENODEV).
        """
        request = _IFREQ_INDEX.pack(device.encode(), 0)
        return int(
            _IFREQ_INDEX.unpack(fcntl.ioctl(self._socket().fileno(), SIOCGIFINDEX, request))[1]
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> trio.socket.SocketType:
        if self._sock is None:
            self._sock = trio.socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
        return self._sock

    async def request(self, *messages: tuple[int, int, bytes]) -> None:
        """Send *messages* ``(type, flags, body)``, in one datagram, and await the kernel's
        acknowledgements (it handles them in order, each whatever became of the one before).

        Raises:
            OSError: the kernel's error for the first request that failed (errno set).
        """
        async with self._lock:
            sock = self._socket()
            datagram = b""
            codes: dict[int, int | None] = {}
            for kind, flags, body in messages:
                self._sequence = self._sequence % 0xFFFFFFFF + 1
                codes[self._sequence] = None
                datagram += _HEADER.pack(
                    _HEADER.size + len(body),
                    kind,
                    flags | NLM_F_REQUEST | NLM_F_ACK,
                    self._sequence,
                    0,
                )
                datagram += body
            await sock.send(datagram)
            while None in codes.values():
                for sequence, acked in _acks(await sock.recv(1 << 16)):
                    if sequence in codes:  # else the late ack of a cancelled caller's request
                        codes[sequence] = acked
            for code in codes.values():
                if code:
                    raise OSError(-code, os.strerror(-code))

    async def dump(self, message: tuple[int, int, bytes]) -> list[bytes]:
        """Send one dump request; the messages of the reply, up to its end.

        Raises:
            OSError: the kernel refused the dump.
        """
        kind, flags, body = message
        async with self._lock:
            sock = self._socket()
            self._sequence = self._sequence % 0xFFFFFFFF + 1
            sequence = self._sequence
            header = _HEADER.pack(
                _HEADER.size + len(body), kind, flags | NLM_F_REQUEST, sequence, 0
            )
            await sock.send(header + body)
            found: list[bytes] = []
            while True:
                for got, seq, data in _messages(await sock.recv(1 << 16)):
                    if seq != sequence:
                        continue  # the late ack of a cancelled caller's request
                    if got == NLMSG_DONE:
                        return found
                    if got == NLMSG_ERROR:
                        code = _ERROR_CODE.unpack_from(data, _HEADER.size)[0]
                        raise OSError(-code, os.strerror(-code))
                    found.append(data)


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """``(type, sequence, whole message)`` of each netlink message in *data*."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        found.append((kind, seq, data[offset : offset + length]))
        offset += (length + 3) & ~3
    return found


def _acks(data: bytes) -> list[tuple[int, int]]:
    """``(sequence, error code)`` (0: success) of each acknowledgement in *data*."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if kind == NLMSG_ERROR:
            found.append((seq, int(_ERROR_CODE.unpack_from(data, offset + _HEADER.size)[0])))
        if length < _HEADER.size:
            break
        offset += (length + 3) & ~3
    return found
