"""The hand-packed rtnetlink messages read back with pyroute2's parsers (pure, no kernel)."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from plugins.net import netlink


def _decode(parser: type, message: tuple[int, int, bytes]) -> tuple[int, int, Any]:
    kind, flags, body = message
    header = struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0)
    decoded = parser(header + body)
    decoded.decode()
    return kind, flags, decoded


def test_new_veth() -> None:
    kind, flags, msg = _decode(
        ifinfmsg, netlink.new_veth("crlv7", "eth0", 4242, master=12, mtu=1400)
    )
    assert (kind, flags) == (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
    assert msg["flags"] & IFF_UP and msg["change"] & IFF_UP
    assert msg.get_attr("IFLA_IFNAME") == "crlv7"
    assert msg.get_attr("IFLA_MASTER") == 12
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_NET_NS_FD") == 4242
    for end in (msg, peer):  # one queue each: no shrinking, which waits for RCU
        assert (end.get_attr("IFLA_NUM_TX_QUEUES"), end.get_attr("IFLA_NUM_RX_QUEUES")) == (1, 1)
        assert end.get_attr("IFLA_MTU") == 1400


def test_new_veth_without_bridge_names_no_master() -> None:
    _, _, msg = _decode(ifinfmsg, netlink.new_veth("crlv8", "eth0", 7, master=None, mtu=1500))
    assert msg.get_attr("IFLA_MASTER") is None


def test_new_address() -> None:
    kind, flags, msg = _decode(ifaddrmsg, netlink.new_address(31, "10.254.0.1", 30))
    assert (kind, flags) == (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (socket.AF_INET, 30, 31)
    assert msg.get_attr("IFA_LOCAL") == msg.get_attr("IFA_ADDRESS") == "10.254.0.1"


def test_set_up() -> None:
    kind, flags, msg = _decode(ifinfmsg, netlink.set_up(5))
    assert (kind, flags) == (RTM_NEWLINK, 0)
    assert msg["index"] == 5 and msg["flags"] & IFF_UP and msg["change"] & IFF_UP


def test_new_default_route() -> None:
    kind, flags, msg = _decode(rtmsg, netlink.new_default_route("10.254.0.1"))
    assert (kind, flags) == (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)
    assert (msg["family"], msg["dst_len"], msg["table"], msg["type"]) == (socket.AF_INET, 0, 254, 1)
    assert msg.get_attr("RTA_GATEWAY") == "10.254.0.1"


def test_delete_link() -> None:
    kind, _, msg = _decode(ifinfmsg, netlink.delete_link("crlv9"))
    assert kind == RTM_DELLINK
    assert msg.get_attr("IFLA_IFNAME") == "crlv9"


def test_acks_are_read_with_their_sequence_numbers() -> None:
    def error(seq: int, code: int) -> bytes:
        return struct.pack("=IHHIIi", 20, 2, 0, seq, 0, code)

    def other(seq: int) -> bytes:  # e.g. a RTM_NEWLINK message
        return struct.pack("=IHHII", 16, 16, 0, seq, 0)

    assert netlink._acks(error(3, 0) + other(9) + error(4, -17)) == [(3, 0), (4, -17)]
    assert netlink._acks(b"") == []
