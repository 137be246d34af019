"""Bridges made on demand for subnets inside ``[net] bridge_networks``; containers
without a network; ``ping_group_range`` in every container's namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from ipaddress import IPv4Network

import pytest

from supervisor.client import Client
from supervisor.errors import InvalidRequest, InvalidState
from tests.cli.oneshot import daemon_subnet
from tests.conftest import NOTHING_LEFT, Daemon, init_pid, leftovers
from tests.net.conftest import Outside, devices, net_leftovers, table_rules


def _bridges(daemon: Daemon) -> list[str]:
    return devices(f"{daemon.net['interface_prefix']}b")


def _on_demand(daemon: Daemon) -> list[str]:
    """The device of every bridge of *daemon* made on demand (not its configured lan)."""
    return [b for b in _bridges(daemon) if not b.endswith("blan")]


def _ping(client: Client, handle: str, address: str) -> int:
    return int(client.run(handle, f"ping -c 1 -W 3 {address}", privileged=True)[0])


def _host_address(device: str) -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", device], capture_output=True, text=True
    ).stdout
    return out.split()[3]


def test_a_bridge_is_made_with_its_first_container_and_removed_after_its_last(
    daemon: Daemon, client: Client
) -> None:
    subnet = daemon_subnet(daemon)
    a = client.create({"network": {"address": f"{subnet[17]}/24"}})
    try:
        (bridge,) = _on_demand(daemon)
        assert _host_address(bridge) == f"{subnet[1]}/24"
        b = client.create({"network": {"address": f"{subnet[18]}/24"}})  # joins it
        c = client.create({"network": {"address": f"{subnet[19]}"}})  # its prefix is known now
        assert _on_demand(daemon) == [bridge]
        assert client.info(b)["host_ip"] == str(subnet[1])
        assert _ping(client, a, str(subnet[18])) == 0
        assert _ping(client, b, str(subnet[17])) == 0
        rules = [
            r
            for r in table_rules(daemon.net["table"]) or []
            if r.get("comment", "").startswith("corral:bridge:")
        ]
        assert {r["chain"] for r in rules} == {"forward", "postrouting"}
        for handle in (b, c):
            client.destroy(handle)
        assert _on_demand(daemon) == [bridge]  # a is still on it
    finally:
        client.destroy(a)
    assert _on_demand(daemon) == []
    assert net_leftovers(daemon)["rules"] == []
    assert leftovers(daemon) == NOTHING_LEFT


def test_a_named_bridge_with_its_gateway_and_another_gateway_refused(
    daemon: Daemon, client: Client
) -> None:
    subnet = daemon_subnet(daemon)
    gateway = str(subnet[254])
    network = {"address": f"{subnet[17]}/24", "bridge": "odlan", "gateway": gateway}
    a = client.create({"network": network})
    try:
        device = f"{daemon.net['interface_prefix']}bodlan"
        assert _host_address(device) == f"{gateway}/24"
        status, out, _ = client.run(a, "ip route")
        assert f"default via {gateway} dev eth0" in out
        with pytest.raises(
            InvalidRequest,
            match=f"gateway {subnet[1]} refused: bridge odlan .* has the gateway {gateway}",
        ):
            client.create({"network": {"address": f"{subnet[18]}/24", "gateway": str(subnet[1])}})
        with pytest.raises(InvalidRequest, match=f"subnet {subnet} overlaps bridge odlan"):
            client.create({"network": {"address": f"{subnet[18]}/24", "bridge": "other"}})
        b = client.create({"network": {"bridge": "odlan"}})  # the next free address
        assert client.info(b)["container_ip"] == str(subnet[1])  # .254 is the gateway
        client.destroy(b)
    finally:
        client.destroy(a)
    assert _on_demand(daemon) == []
    assert client.list() == []


@pytest.mark.parametrize(
    ("network", "words"),
    [
        (lambda d: {"address": "172.31.5.17/24"}, "is not inside bridge_networks"),
        (lambda d: {"address": f"{daemon_subnet(d)[17]}/31"}, "has no room for containers"),
        (lambda d: {"address": f"{daemon_subnet(d)[0]}/24"}, "is not a host address"),
        (lambda d: {"address": f"{daemon_subnet(d)[1]}/24"}, "is the gateway of bridge"),
        (lambda d: {"bridge": "nosuch"}, "unknown bridge 'nosuch'"),
        (
            lambda d: {"address": f"{daemon_subnet(d)[17]}/24", "bridge": "a-name-far-too-long"},
            "at most 15 characters",
        ),
    ],
)
def test_refused_bridges_leave_nothing(
    daemon: Daemon, client: Client, network: Callable[[Daemon], dict[str, str]], words: str
) -> None:
    with pytest.raises(InvalidRequest, match=words):
        client.create({"network": network(daemon)})
    assert _on_demand(daemon) == []
    assert client.list() == []


def test_a_subnet_the_host_uses_is_refused_at_use_time(
    net_daemon: Callable[..., Daemon], outside: Outside
) -> None:
    # The outside's veth gives the host an address of 198.18.0.0/15 after the daemon started.
    d = net_daemon(bridge_networks='["198.18.0.0/15"]')
    subnet = IPv4Network(f"{outside.host_ip}/24", strict=False)
    with d.client() as c:
        with pytest.raises(
            InvalidRequest, match=f"subnet {subnet} overlaps .* of host device {outside.device}"
        ):
            c.create({"network": {"address": f"{subnet[200]}/24"}})
        assert c.list() == []
    assert _on_demand(d) == []
    assert net_leftovers(d)["rules"] == []
    assert leftovers(d) == NOTHING_LEFT


def test_an_on_demand_bridge_survives_kill9_and_is_removed_after(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    subnet = daemon_subnet(d)
    with d.client() as c:
        a = c.create({"network": {"address": f"{subnet[17]}/24"}, "grace_time": None})
        b = c.create({"network": {"address": f"{subnet[18]}/24"}, "grace_time": None})
    (bridge,) = _on_demand(d)
    d.kill9()
    d.start()
    with d.client() as c:
        assert _on_demand(d) == [bridge]
        assert _ping(c, a, str(subnet[18])) == 0
        # The pool is the bridge's: its addresses stay taken, and its gateway.
        with pytest.raises(InvalidRequest, match="already in use"):
            c.create({"network": {"address": f"{subnet[18]}/24"}})
        with pytest.raises(InvalidRequest, match="refused"):
            c.create({"network": {"address": f"{subnet[19]}/24", "gateway": str(subnet[9])}})
        rules = table_rules(d.net["table"]) or []
        assert f"corral:bridge:{bridge}" in {r.get("comment") for r in rules}
        c.destroy(a)
        assert _ping(c, b, str(subnet[1])) == 1  # the host's own address: input dropped
        c.destroy(b)
    assert _on_demand(d) == []
    assert net_leftovers(d)["rules"] == []


def test_no_network_is_loopback_only(daemon: Daemon, client: Client) -> None:
    handle = client.create({"network": "none"})
    try:
        info = client.info(handle)
        assert info["container_ip"] is None
        status, out, _ = client.run(
            handle,
            "tail -n +3 /proc/net/dev | cut -d: -f1; ping -c1 -W2 127.0.0.1",
            privileged=True,
        )
        assert status == 0
        assert out.split()[0] == "lo" and "1 packets received" in out
        assert not (daemon.depot / handle / "resolv.conf").exists()
        with pytest.raises(
            InvalidState, match='has no network \\(created with "network": "none"\\)'
        ):
            client.call("net", handle, "out", "10.0.0.0/8")
    finally:
        client.destroy(handle)
    assert leftovers(daemon) == NOTHING_LEFT


@pytest.mark.parametrize("network", [None, "none"])
def test_any_user_may_ping_as_under_docker(
    daemon: Daemon, client: Client, network: str | None
) -> None:
    handle = client.create({"network": network} if network else {})
    try:
        # Read from the host: a container with ids of its own sees the host's gids as its
        # overflow gid (the range covers its block all the same).
        netns = ["nsenter", "-t", str(init_pid(daemon, handle)), "-n"]
        group_range = subprocess.run(
            [*netns, "cat", "/proc/sys/net/ipv4/ping_group_range"], capture_output=True, text=True
        )
        assert group_range.stdout.split() == ["0", "2147483647"], group_range.stderr
        # Busybox's ping wants a raw socket; any program may open an ICMP echo socket.
        opened = subprocess.run(
            [
                *netns,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)",
            ],
            capture_output=True,
            text=True,
        )
        assert opened.returncode == 0, opened.stderr
    finally:
        client.destroy(handle)
