"""``net out`` and the default egress policy; the host's own services stay closed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from supervisor.client import Client
from supervisor.errors import InvalidRequest
from tests.conftest import Daemon
from tests.net.conftest import HostListener, Outside


def _tcp(client: Client, handle: str, address: str, port: int) -> bool:
    """Whether a TCP connection from the container gets the listener's ``pong``."""
    _, out, _ = client.run(handle, f"nc -w 2 {address} {port} </dev/null")
    return "pong" in out


def _udp(client: Client, handle: str, address: str, port: int, log: Path) -> bool:
    """Whether a UDP datagram from the container (a TFTP request) reaches the listener."""
    client.run(handle, f"cd /tmp && timeout 1 tftp -g -r probe {address} {port}")
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        if f"udp {port}" in log.read_text():
            return True
        time.sleep(0.05)
    return False


def _ping(client: Client, handle: str, address: str) -> bool:
    return client.run(handle, f"ping -c 1 -W 1 {address}", privileged=True)[0] == 0


def test_egress_is_denied_until_net_out_opens_exactly_one_destination(
    client: Client, outside: Outside
) -> None:
    log = outside.serve(tcp=(7001, 7002), udp=(7001,))
    handle = client.create()
    try:
        assert not _tcp(client, handle, outside.ip, 7001)
        assert not _ping(client, handle, outside.ip)

        assert client.call("net", handle, "out", f"{outside.ip}:7001", {"protocol": "tcp"}) == "ok"
        assert _tcp(client, handle, outside.ip, 7001)
        # another port, another protocol (UDP on the same port, ICMP): still closed
        assert not _tcp(client, handle, outside.ip, 7002)
        assert not _udp(client, handle, outside.ip, 7001, log)
        assert not _ping(client, handle, outside.ip)
        # the outside sees the host's address: outbound NAT of Corral's pool
        assert f"tcp 7001 from {outside.host_ip}" in log.read_text()

        # the UDP probe itself works once UDP is opened too
        client.call("net", handle, "out", f"{outside.ip}/32:7001", {"protocol": "udp"})
        assert _udp(client, handle, outside.ip, 7001, log)
        client.call("net", handle, "out", outside.ip, {"protocol": "icmp"})
        assert _ping(client, handle, outside.ip)
        assert not _tcp(client, handle, outside.ip, 7002)
    finally:
        client.destroy(handle)


def test_allow_networks_opens_a_destination_for_every_container(
    net_daemon: Callable[..., Daemon], outside: Outside
) -> None:
    outside.serve(tcp=(7005,))
    d = net_daemon(allow_networks=f'["{outside.ip}/32"]')
    with d.client() as c:
        handle = c.create()
        assert _tcp(c, handle, outside.ip, 7005)
        c.destroy(handle)


def test_host_services_are_closed_to_containers_by_default(client: Client) -> None:
    listener = HostListener("0.0.0.0")
    handle = client.create()
    try:
        gateway = client.info(handle)["host_ip"]
        assert not _tcp(client, handle, gateway, listener.port)
        assert listener.accepted == 0
    finally:
        client.destroy(handle)
        listener.close()


def test_allow_host_access_opens_the_host(net_daemon: Callable[..., Daemon]) -> None:
    listener = HostListener("0.0.0.0")
    d = net_daemon(allow_host_access="true")
    try:
        with d.client() as c:
            handle = c.create()
            assert _tcp(c, handle, c.info(handle)["host_ip"], listener.port)
            c.destroy(handle)
    finally:
        listener.close()


def test_egress_of_a_bridge_container_is_its_own(client: Client, outside: Outside) -> None:
    outside.serve(tcp=(7006,))
    opened, closed = (
        client.create({"network": {"bridge": "lan"}}),
        client.create({"network": {"bridge": "lan"}}),
    )
    try:
        client.call("net", opened, "out", f"{outside.ip}:7006", {"protocol": "tcp"})
        assert _tcp(client, opened, outside.ip, 7006)
        # its neighbour on the same bridge got nothing opened
        assert not _tcp(client, closed, outside.ip, 7006)
    finally:
        client.destroy(opened)
        client.destroy(closed)


def _kernel_log() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout


def test_net_out_takes_ranges_icmp_types_and_logs_new_connections(
    client: Client, outside: Outside
) -> None:
    outside.serve(tcp=(7001,))
    ip = IPv4Address(outside.ip)
    handle = client.create()
    try:
        client.call("net", handle, "out", f"{ip + 1}-{ip + 3}:7001", {"protocol": "tcp"})
        assert not _tcp(client, handle, outside.ip, 7001)
        client.call(
            "net", handle, "out", f"{ip - 1}-{ip + 1}:7001", {"protocol": "tcp", "log": True}
        )
        assert _tcp(client, handle, outside.ip, 7001)
        assert f"corral-out {handle} " in _kernel_log()

        client.call("net", handle, "out", outside.ip, {"protocol": "icmp", "icmp_type": 13})
        assert not _ping(client, handle, outside.ip)  # a timestamp request is not an echo
        client.call(
            "net", handle, "out", outside.ip, {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}
        )
        assert _ping(client, handle, outside.ip)
    finally:
        client.destroy(handle)


def test_net_out_rules_are_listed_and_revoked(client: Client, outside: Outside) -> None:
    outside.serve(tcp=(7001,))
    handle = client.create()
    try:
        client.call("net", handle, "out", f"{outside.ip}:7001", {"protocol": "tcp"})
        client.call("net", handle, "out", outside.ip, {"protocol": "icmp", "icmp_type": 8})
        assert client.info(handle)["net_out"] == [
            {"destination": f"{outside.ip}/32:7001", "protocol": "tcp"},
            {"destination": f"{outside.ip}/32", "protocol": "icmp", "icmp_type": 8},
        ]
        assert _tcp(client, handle, outside.ip, 7001)
        client.call("net", handle, "out", f"{outside.ip}:7001", {"protocol": "tcp", "revoke": True})
        assert not _tcp(client, handle, outside.ip, 7001)
        assert _ping(client, handle, outside.ip)  # the other rule stays
        assert client.info(handle)["net_out"] == [
            {"destination": f"{outside.ip}/32", "protocol": "icmp", "icmp_type": 8}
        ]
        with pytest.raises(InvalidRequest, match=f"container {handle} has no rule"):
            client.call(
                "net", handle, "out", f"{outside.ip}:7001", {"protocol": "tcp", "revoke": True}
            )
    finally:
        client.destroy(handle)
