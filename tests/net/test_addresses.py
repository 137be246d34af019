"""Addresses: the /30 pool, requested addresses, quarantine, exhaustion, shared bridges."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network

import pytest

from supervisor.client import Client, CorralError
from supervisor.errors import InvalidRequest, NoCapacity
from tests.conftest import NOTHING_LEFT, Daemon, leftovers, wait_until
from tests.net.conftest import devices, net_leftovers, net_settings, wait_listening


def _pool(daemon: Daemon) -> IPv4Network:
    return IPv4Network(net_settings(daemon)["pool"])


def _lan(daemon: Daemon) -> IPv4Network:
    return IPv4Network(net_settings(daemon)["bridges"]["lan"])


def test_container_gets_a_slash_30_with_the_host_as_gateway(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    try:
        info = client.info(handle)
        host, container = info["host_ip"], info["container_ip"]
        pool = _pool(daemon)
        subnet = IPv4Network(f"{container}/30", strict=False)
        assert subnet.subnet_of(pool)
        assert (str(subnet[1]), str(subnet[2])) == (host, container)
        status, out, _ = client.run(handle, "ip -4 addr show eth0; ip route")
        assert status == 0
        assert f"inet {container}/30" in out
        assert f"default via {host} dev eth0" in out
    finally:
        client.destroy(handle)


def test_create_with_a_requested_address(daemon: Daemon, client: Client) -> None:
    pool = _pool(daemon)
    wanted = str(pool[10])  # .10 is the container end of the /30 at .8
    handle = client.create({"network": {"address": f"{wanted}/30"}})
    try:
        info = client.info(handle)
        assert (info["container_ip"], info["host_ip"]) == (wanted, str(pool[9]))
        with pytest.raises(InvalidRequest, match=f"address {wanted} is already in use"):
            client.create({"network": {"address": wanted}})
    finally:
        client.destroy(handle)
    assert client.list() == []


@pytest.mark.parametrize(
    ("address", "words"),
    [
        (lambda pool: str(pool[9]), "cannot be a container's"),
        (lambda pool: "203.0.113.2", "not in the address pool"),
        (lambda pool: f"{pool[10]}/24", "prefix length here is /30"),
        (lambda pool: "banana", "is not an IPv4 address"),
    ],
)
def test_requested_address_that_cannot_be_had_is_invalid(
    daemon: Daemon, client: Client, address: Callable[[IPv4Network], str], words: str
) -> None:
    with pytest.raises(InvalidRequest, match=words):
        client.create({"network": {"address": address(_pool(daemon))}})
    assert client.list() == []


def test_unknown_bridge_and_key_are_invalid(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="unknown bridge 'nope' \\(configured: lan\\)"):
        client.create({"network": {"bridge": "nope"}})
    with pytest.raises(InvalidRequest, match='network: must be "none" or an object'):
        client.create({"network": {"mtu": 1400}})


def test_exhausted_pool_is_no_capacity_and_freed_addresses_wait_in_quarantine(
    net_daemon: Callable[..., Daemon],
) -> None:
    # The first /29 of this daemon's own pool: room for two containers.
    d = net_daemon(pool=lambda s: f'"{IPv4Network(s["pool"])[0]}/29"', quarantine="1")
    prefix = net_settings(d)["interface_prefix"]
    with d.client() as c:
        first, second = c.create(), c.create()
        with pytest.raises(NoCapacity, match="is exhausted"):
            c.create()
        # the failed create left nothing: two containers, two veths
        assert len(c.list()) == 2
        assert len(devices(prefix)) == 2
        assert len(leftovers(d)["depot"]) == 2
        freed = c.info(first)["container_ip"]
        c.destroy(first)
        with pytest.raises(NoCapacity, match="1 in quarantine"):
            c.create()
        with pytest.raises(InvalidRequest, match=f"address {freed} was released recently"):
            c.create({"network": {"address": freed}})

        def after_quarantine() -> str:
            try:
                return c.create({"network": {"address": freed}})
            except InvalidRequest as exc:
                assert "was released recently" in str(exc)
                return ""

        third = wait_until(after_quarantine, what="the quarantine (1 s) to end")
        assert c.info(third)["container_ip"] == freed
        c.destroy(second)
        c.destroy(third)
    assert net_leftovers(d) == {"devices": [], "rules": [], "addresses": []}


def test_containers_on_a_shared_bridge_ping_and_talk(daemon: Daemon, client: Client) -> None:
    lan = _lan(daemon)
    a = client.create({"network": {"bridge": "lan"}})
    b = client.create({"network": {"address": f"{lan[17]}/{lan.prefixlen}"}})  # implies lan
    try:
        ia, ib = client.info(a), client.info(b)
        assert ib["container_ip"] == str(lan[17])
        assert IPv4Network(f"{ia['container_ip']}/32").subnet_of(lan)
        assert ia["host_ip"] == ib["host_ip"] == str(lan[1])
        status, out, _ = client.run(a, f"ping -c 1 -W 2 {ib['container_ip']}", privileged=True)
        assert status == 0, out
        status, out, _ = client.run(b, f"ping -c 1 -W 2 {ia['container_ip']}", privileged=True)
        assert status == 0, out
        for sender, receiver, address in ((a, b, ib["container_ip"]), (b, a, ia["container_ip"])):
            # (busybox nc closes its sending half when its stdin ends: keep it open)
            client.spawn(receiver, "sleep 30 | nc -l -p 7000 > /tmp/got")
            wait_listening(client, receiver, 7000)
            status, _, err = client.run(sender, f"echo hello {sender} | nc -w 2 {address} 7000")
            assert status == 0, err
            deadline = time.monotonic() + 5
            while (got := client.run(receiver, "cat /tmp/got")) != [0, f"hello {sender}\n", ""]:
                assert time.monotonic() < deadline, f"{sender} -> {receiver}: got {got}"
                time.sleep(0.05)
    finally:
        client.destroy(a)
        client.destroy(b)
    bridge = f"{net_settings(daemon)['interface_prefix']}blan"
    assert bridge not in devices(bridge), "the bridge outlived its last container"


def test_a_create_that_fails_half_way_leaves_nothing(net_daemon: Callable[..., Daemon]) -> None:
    d = net_daemon()
    prefix = net_settings(d)["interface_prefix"]
    # A device not made by the daemon takes the name its first veth would get.
    taken = f"{prefix}v0"
    subprocess.run(
        ["ip", "link", "add", taken, "type", "veth", "peer", f"{prefix}vpeer"], check=True
    )
    try:
        with d.client() as c:
            with pytest.raises(CorralError, match=f"veth {taken}: File exists"):
                c.create()
            assert c.list() == []
            assert leftovers(d)["depot"] == []
            assert devices(prefix) == sorted([taken, f"{prefix}vpeer"])  # not ours: untouched
            # the address was given back without quarantine; the taken name is skipped
            first = str(_pool(d)[2])
            handle = c.create({"network": {"address": first}})
            assert c.info(handle)["container_ip"] == first
            assert f"{prefix}v1" in devices(prefix)
            c.destroy(handle)
    finally:
        subprocess.run(["ip", "link", "del", taken], check=True)
    assert net_leftovers(d) == {"devices": [], "rules": [], "addresses": []}


def test_a_create_that_fails_at_launch_gives_back_its_veth_and_address(
    net_daemon: Callable[..., Daemon],
) -> None:
    d = net_daemon()
    first = str(_pool(d)[2])
    with d.client() as c:
        # pids 1: the launcher joins the cgroups but cannot fork the init. The veth,
        # made while the launch goes on, may exist by then or not; neither may stay.
        for _ in range(5):
            with pytest.raises(CorralError, match="fork"):
                c.create({"network": {"address": first}, "limits": {"pids": 1}})
        handle = c.create({"network": {"address": first}})  # given back, not quarantined
        assert c.info(handle)["container_ip"] == first
        c.destroy(handle)
    assert net_leftovers(d) == {"devices": [], "rules": [], "addresses": []}
    assert leftovers(d) == NOTHING_LEFT
