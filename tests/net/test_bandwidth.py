"""Bandwidth limits (``limit bandwidth``, create's ``network.bandwidth``): measured
through real transfers, removed at destroy, kept across ``kill -9``."""

from __future__ import annotations

import json
import subprocess

import pytest

from supervisor.client import Client
from supervisor.errors import InvalidRequest
from tests.conftest import Daemon, init_pid
from tests.net.conftest import net_leftovers, wait_listening

MBIT = 1_000_000 // 8  # bytes per second
#: 10 Mbit/s, bursts of 64 KiB (Warden's unit: bytes).
LIMIT = {"rate": 10 * MBIT, "burst": 65536}
SIZE = 3_000_000  # bytes sent: about 2.4 s at 10 Mbit/s


def _qdiscs(device: str) -> list[str]:
    done = subprocess.run(
        ["tc", "-j", "qdisc", "show", "dev", device], capture_output=True, text=True, check=True
    )
    return sorted(q["kind"] for q in json.loads(done.stdout))


def _serve_file(c: Client, handle: str, port: int = 8080) -> None:
    c.spawn(
        handle,
        f"mkdir -p /tmp/www && head -c {SIZE} /dev/zero > /tmp/www/blob && "
        f"exec busybox httpd -f -p {port} -h /tmp/www",
    )
    wait_listening(c, handle, port)


def _seconds(c: Client, handle: str, url: str) -> float:
    """How long one download takes, measured inside the container by its uptime clock
    (10 ms steps: ample for the seconds a limited download takes)."""
    status, out, err = c.run(
        handle,
        "read a _ < /proc/uptime; wget -q -O /dev/null "
        f"{url} || exit 1; read b _ < /proc/uptime; echo $a $b",
    )
    assert status == 0, err
    start, end = map(float, out.split())
    return end - start


def _mbit_per_s(seconds: float) -> float:
    return SIZE * 8 / seconds / 1e6


def test_a_limit_holds_both_ways_between_two_containers(client: Client) -> None:
    server = client.create({"network": {"bridge": "lan"}})
    downloader = client.create({"network": {"bridge": "lan"}})
    try:
        _serve_file(client, server)
        url = f"http://{client.info(server)['container_ip']}:8080/blob"
        unlimited = _seconds(client, downloader, url)
        # into the downloader: the tbf on its veth
        assert client.call("limit", downloader, "bandwidth", LIMIT) == LIMIT
        into = _mbit_per_s(_seconds(client, downloader, url))
        client.call("limit", downloader, "bandwidth", {})
        # out of the server: its IFB
        client.call("limit", server, "bandwidth", LIMIT)
        out_of = _mbit_per_s(_seconds(client, downloader, url))
        print(f"\nunlimited {unlimited:.2f} s, in {into:.2f}, out {out_of:.2f} Mbit/s")
        assert unlimited < 0.5  # the limit, not the path, makes the rate below
        # Never above the rate. Below it, TCP loses some to the shaper's drops and its own
        # backoff (8.8 Mbit/s seen out of the IFB on a busy machine).
        assert 8 <= into <= 11
        assert 8 <= out_of <= 11
        stat = client.info(server)["bandwidth_stat"]
        assert (stat["in_rate"], stat["out_rate"], stat["out_burst"]) == (
            10 * MBIT,
            10 * MBIT,
            65536,
        )
        assert stat["out_bytes"] >= SIZE and isinstance(stat["out_dropped"], int)
        assert client.info(downloader)["bandwidth_stat"] is None
    finally:
        client.destroy(server)
        client.destroy(downloader)


def _host_end(host_ip: str) -> str:
    """The host's device holding *host_ip*: a pool container's veth."""
    done = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    for device in json.loads(done.stdout):
        if any(a["local"] == host_ip for a in device["addr_info"]):
            return str(device["ifname"])
    raise AssertionError(f"no device has {host_ip}")


def _eth0_qdiscs(daemon: Daemon, handle: str) -> list[str]:
    done = subprocess.run(
        [
            "nsenter",
            "-t",
            str(init_pid(daemon, handle)),
            "-n",
            "tc",
            "-j",
            "qdisc",
            "show",
            "dev",
            "eth0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(q["kind"] for q in json.loads(done.stdout))


def test_a_limit_is_made_at_create_lifted_with_an_empty_object_and_gone_with_destroy(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create({"network": {"bandwidth": LIMIT}})
    try:
        assert client.call("limit", handle, "bandwidth") == LIMIT
        info = client.info(handle)
        assert info["limits"]["bandwidth"] == LIMIT
        veth = _host_end(info["host_ip"])
        # the bucket of each direction: on the host end, and on eth0 inside
        assert _qdiscs(veth) == ["tbf"] and _eth0_qdiscs(daemon, handle) == ["tbf"]
        assert client.call("limit", handle, "bandwidth", {}) is None
        assert "tbf" not in _qdiscs(veth) + _eth0_qdiscs(daemon, handle)
        assert client.info(handle)["bandwidth_stat"] is None
        # a job cannot lift its own limit: no job has CAP_NET_ADMIN
        client.call("limit", handle, "bandwidth", LIMIT)
        status, _, err = client.run(handle, "ip link set eth0 mtu 1400", privileged=True)
        assert status != 0 and "Operation not permitted" in err
    finally:
        client.destroy(handle)
    assert net_leftovers(daemon, handle) == {"devices": [], "rules": [], "addresses": []}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"rate": 0, "burst": 65536}, "rate 0 is not a number from 1"),
        ({"rate": 1000}, 'bandwidth must be {"rate"'),
        ({"rate": 1000, "burst": 100}, "burst 100 is smaller than a full frame"),
        ({"rate": 1000, "burst": 10_000_000}, "takes more than 60 s at rate 1000"),
        ({"rate": "1m", "burst": 65536}, "rate '1m' is not a number"),
        ("fast", "bandwidth must be"),
    ],
)
def test_bad_limits_are_refused_and_change_nothing(
    daemon: Daemon, client: Client, value: object, words: str
) -> None:
    handle = client.create()
    try:
        with pytest.raises(InvalidRequest, match=words):
            client.call("limit", handle, "bandwidth", value)
        assert client.call("limit", handle, "bandwidth") is None
        with pytest.raises(InvalidRequest, match=f"network: .*{words}"):
            client.create({"network": {"bandwidth": value}})
    finally:
        client.destroy(handle)
    assert net_leftovers(daemon) == {"devices": [], "rules": [], "addresses": []}


def test_a_limit_survives_kill9_and_goes_with_destroy_after(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    with d.client() as c:
        handle = c.create({"network": {"bandwidth": LIMIT}})
    d.kill9()
    d.start()
    with d.client() as c:
        assert c.call("limit", handle, "bandwidth") == LIMIT
        stat = c.info(handle)["bandwidth_stat"]
        assert stat["in_bytes"] is not None and stat["out_bytes"] is not None
        assert _qdiscs(_host_end(c.info(handle)["host_ip"])) == ["tbf"]
        assert _eth0_qdiscs(d, handle) == ["tbf"]
        c.destroy(handle)
    assert net_leftovers(d, handle) == {"devices": [], "rules": [], "addresses": []}
