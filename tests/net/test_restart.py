"""Network state across ``kill -9`` of the daemon, and cleanup at destroy and at start."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from tests.conftest import Daemon
from tests.net.conftest import (
    HTTP_PAGE,
    Outside,
    devices,
    http_get,
    net_leftovers,
    net_settings,
    start_httpd,
    table_rules,
)
from tests.net.test_egress import _tcp


def test_forwards_and_egress_rules_hold_across_kill9_and_destroy_removes_them(
    fresh_daemon: Daemon, outside: Outside
) -> None:
    d = fresh_daemon
    outside.serve(tcp=(7003, 7004))
    with d.client() as c:
        handle = c.create()
        start_httpd(c, handle, 8080)
        port = c.call("net", handle, "in", {"container_port": 8080})["host_port"]
        c.call("net", handle, "out", f"{outside.ip}:7003", {"protocol": "tcp"})
        address = c.info(handle)["container_ip"]
    d.kill9()
    # with no daemon running, the kernel keeps forwarding
    assert HTTP_PAGE in http_get("127.0.0.1", port)
    d.start()
    with d.client() as c:
        assert c.info(handle)["container_ip"] == address
        assert HTTP_PAGE in http_get("127.0.0.1", port)
        assert HTTP_PAGE in http_get(outside.host_ip, port)
        assert _tcp(c, handle, outside.ip, 7003)
        assert not _tcp(c, handle, outside.ip, 7004)
        c.destroy(handle)
    assert net_leftovers(d, handle) == {"devices": [], "rules": [], "addresses": []}
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert handle not in ruleset and f" {address}/" not in ruleset
    assert f" {address}/" not in links


def test_start_recreates_what_is_missing_and_removes_what_is_stray(
    net_daemon: Callable[..., Daemon],
) -> None:
    d = net_daemon()
    settings = net_settings(d)
    prefix, table = settings["interface_prefix"], settings["table"]
    with d.client() as c:
        handle = c.create()
        start_httpd(c, handle, 8080)
        port = c.call("net", handle, "in", {"container_port": 8080})["host_port"]
    (device,) = devices(prefix)
    d.kill9()
    # Lose the container's veth and the whole table; leave a stray device of ours.
    subprocess.run(["ip", "link", "del", device], check=True)
    subprocess.run(["nft", "delete", "table", "inet", table], check=True)
    stray = ["ip", "link", "add", f"{prefix}vfffff", "type", "veth", "peer", f"{prefix}vffffe"]
    subprocess.run(stray, check=True)
    d.start()
    assert devices(prefix) == [device]
    rules = table_rules(table)
    assert rules is not None and len([r for r in rules if r.get("comment") == handle]) == 2
    with d.client() as c:
        assert HTTP_PAGE in http_get("127.0.0.1", port)
        status, out, _ = c.run(handle, "ip -4 addr show eth0")
        assert c.info(handle)["container_ip"] in out
        c.destroy(handle)
    assert net_leftovers(d) == {"devices": [], "rules": [], "addresses": []}


def test_last_daemon_out_removes_its_table(net_daemon: Callable[..., Daemon]) -> None:
    d = net_daemon()
    table = net_settings(d)["table"]
    with d.client() as c:
        c.destroy(c.create())
    assert table_rules(table) is not None
    assert d.terminate() == 0
    assert table_rules(table) is None


def test_second_daemon_with_the_same_table_refuses_to_start(
    net_daemon: Callable[..., Daemon], artifacts: tuple[object, object]
) -> None:
    first = net_daemon()
    table = net_settings(first)["table"]
    second = Daemon(*artifacts)  # type: ignore[arg-type]
    try:
        from tests.net.conftest import override_net

        override_net(second, table=f'"{table}"')
        try:
            second.start()
        except RuntimeError as exc:
            assert "in use by another corrald" in str(exc)
        else:
            raise AssertionError("a second daemon took the same nftables table")
    finally:
        second.close()
