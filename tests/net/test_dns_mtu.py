"""Each container's /etc/resolv.conf and the MTU of its network devices."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from plugins.net.dns import HEADER, host_resolv_conf
from supervisor.client import Client
from tests.conftest import Daemon
from tests.net.conftest import devices, net_settings


def test_host_resolver_without_loopback_or_ipv6_servers(tmp_path: Path) -> None:
    host, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    host.write_text(
        "# comment\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nnameserver ::1\n"
        "nameserver fe80::1%eth0\nsearch example.org\noptions edns0 trust-ad\nsortlist 1.2.3.4\n"
    )
    assert host_resolv_conf(host, upstream) == (
        HEADER + "nameserver 10.1.2.3\nsearch example.org\noptions edns0 trust-ad\n"
    )


def test_a_stub_resolver_gives_way_to_its_upstream_servers(tmp_path: Path) -> None:
    host, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    host.write_text("nameserver 127.0.0.53\nsearch lan\n")
    upstream.write_text("nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch other\n")
    assert host_resolv_conf(host, upstream) == (
        HEADER + "nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch lan\n"
    )
    upstream.unlink()  # nothing usable anywhere: no nameserver at all, never a public default
    assert host_resolv_conf(host, upstream) == HEADER + "search lan\n"


def test_a_container_gets_the_hosts_resolver(client: Client) -> None:
    handle = client.create()
    try:
        status, out, _ = client.run(handle, "cat /etc/resolv.conf")
        assert status == 0
        assert out == host_resolv_conf()
        assert "nameserver 127." not in out
    finally:
        client.destroy(handle)


def test_configured_nameservers_are_read_only_and_go_with_the_container(
    net_daemon: Callable[..., Daemon],
) -> None:
    d = net_daemon(nameservers='["192.0.2.53", "198.51.100.53"]')
    with d.client() as c:
        handle = c.create()
        path = Path(c.info(handle)["container_path"]) / "resolv.conf"
        assert path.exists()
        status, out, _ = c.run(handle, "cat /etc/resolv.conf")
        assert (status, out) == (0, HEADER + "nameserver 192.0.2.53\nnameserver 198.51.100.53\n")
        status, _, err = c.run(
            handle, "echo nameserver 6.6.6.6 > /etc/resolv.conf", privileged=True
        )
        assert status != 0 and "Read-only file system" in err
        c.destroy(handle)
    assert not path.exists()


def _mtu(device: str) -> int | None:
    """The MTU of *device*, None if it is gone (a veth of before, on its way out)."""
    done = subprocess.run(
        ["ip", "-j", "link", "show", "dev", device], capture_output=True, text=True
    )
    return int(json.loads(done.stdout)[0]["mtu"]) if done.returncode == 0 else None


def test_the_configured_mtu_is_on_both_ends_of_the_veth_and_on_bridges(
    net_daemon: Callable[..., Daemon],
) -> None:
    d = net_daemon(mtu="1400")
    prefix = net_settings(d)["interface_prefix"]
    with d.client() as c:
        for network in (None, {"bridge": "lan"}):
            handle = c.create({"network": network} if network else None)
            try:
                status, out, _ = c.run(handle, "cat /sys/class/net/eth0/mtu")
                assert (status, out) == (0, "1400\n")
                # its veth (and the bridge), and any veth of before still on its way out
                host_devices = devices(prefix)
                assert host_devices and (network is None or f"{prefix}blan" in host_devices)
                assert {_mtu(device) for device in host_devices} - {None} == {1400}
            finally:
                c.destroy(handle)
