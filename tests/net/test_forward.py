"""``net in``: host ports forwarded to a container, from outside and from the host itself."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from supervisor.client import Client
from supervisor.errors import InvalidRequest, InvalidState, NoCapacity, UnknownHandle
from tests.conftest import Daemon
from tests.net.conftest import (
    HTTP_PAGE,
    Outside,
    http_get,
    net_leftovers,
    net_settings,
    start_httpd,
    table_rules,
)

#: Raw HTTP GET from inside an outside namespace (no urllib: it would honour proxy settings).
GET = """
import socket
s = socket.create_connection(({ip!r}, {port}), timeout=5)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode())
"""


@pytest.mark.parametrize("network", [None, {"bridge": "lan"}], ids=["pool", "bridge"])
def test_server_reachable_through_net_in_from_outside_and_from_the_host(
    daemon: Daemon, client: Client, outside: Outside, network: dict[str, str] | None
) -> None:
    handle = client.create({"network": network} if network else None)
    try:
        start_httpd(client, handle, 8080)
        reply = client.call("net", handle, "in", {"container_port": 8080})
        port = reply["host_port"]
        first, last = net_settings(daemon)["port_range"]
        assert reply == {"host_port": port, "container_port": 8080}
        assert first <= port <= last
        # an outside client, to the host's address on its link
        done = outside.python(GET.format(ip=outside.host_ip, port=port))
        assert HTTP_PAGE in done.stdout, done.stderr
        # the host itself: its own address, and loopback
        assert HTTP_PAGE in http_get(outside.host_ip, port)
        assert HTTP_PAGE in http_get("127.0.0.1", port)
    finally:
        client.destroy(handle)
    assert net_leftovers(daemon, handle) == {"devices": [], "rules": [], "addresses": []}


def test_explicit_host_port_defaults_the_container_port_and_cannot_be_taken_twice(
    daemon: Daemon, client: Client
) -> None:
    a, b = client.create(), client.create()
    try:
        port = net_settings(daemon)["port_range"][1] - 1
        assert client.call("net", a, "in", {"host_port": port}) == {
            "host_port": port,
            "container_port": port,
        }
        with pytest.raises(InvalidRequest, match=f"host port {port} is already forwarded"):
            client.call("net", b, "in", {"host_port": port, "container_port": 80})
        start_httpd(client, a, port)
        assert HTTP_PAGE in http_get("127.0.0.1", port)
        rules = table_rules(net_settings(daemon)["table"]) or []
        assert len([r for r in rules if r.get("comment") == a]) == 2  # prerouting + output
        assert not [r for r in rules if r.get("comment") == b]
        client.destroy(a)
        # once its container is gone the port can be forwarded again
        assert client.call("net", b, "in", {"host_port": port, "container_port": 80})
    finally:
        for handle in (a, b):
            if handle in client.list():
                client.destroy(handle)


def test_port_pool_exhaustion_is_no_capacity(net_daemon: Callable[..., Daemon]) -> None:
    d = net_daemon(port_range=lambda s: f"[{s['port_range'][0]}, {s['port_range'][0]}]")
    with d.client() as c:
        handle = c.create()
        port = c.call("net", handle, "in", {})["host_port"]
        with pytest.raises(NoCapacity, match=f"port range {port}-{port} is exhausted"):
            c.call("net", handle, "in", {})
        rules = table_rules(net_settings(d)["table"]) or []
        assert len([r for r in rules if r.get("comment") == handle]) == 2
        c.destroy(handle)


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        (["in", {"host_port": 0}], InvalidRequest, "host_port 0 is not a port"),
        (["in", {"host_port": "80"}], InvalidRequest, "option host_port has the wrong type"),
        (["in", {"proto": "udp"}], InvalidRequest, "unknown option 'proto'"),
        (["sideways"], InvalidRequest, 'DIRECTION must be "in" or "out"'),
        (["out"], InvalidRequest, "missing argument DESTINATION"),
        (["out", "1.2.3.4:99999"], InvalidRequest, "port '99999'"),
    ],
)
def test_bad_net_requests_are_invalid(
    client: Client, container: str, args: list[object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        client.call("net", container, *args)


def test_net_on_an_unknown_handle(client: Client) -> None:
    with pytest.raises(UnknownHandle):
        client.call("net", "nope", "in", {})


def test_net_rules_are_refused_on_a_stopped_container_and_none_is_added(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    try:
        client.call("stop", handle)
        rules = net_leftovers(daemon, handle)["rules"]
        for direction, arg in (("in", {"container_port": 8080}), ("out", "10.9.9.9/32")):
            refusal = f"container {handle}: cannot net {direction} while stopped"
            with pytest.raises(InvalidState, match=refusal):
                client.call("net", handle, direction, arg)
        assert net_leftovers(daemon, handle)["rules"] == rules
    finally:
        client.destroy(handle)


def test_a_forward_is_listed_and_revoked_and_its_port_freed(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    try:
        start_httpd(client, handle, 8080)
        port = client.call("net", handle, "in", {"container_port": 8080})["host_port"]
        assert client.info(handle)["net_in"] == [{"host_port": port, "container_port": 8080}]
        assert HTTP_PAGE in http_get("127.0.0.1", port)
        assert client.call("net", handle, "in", {"host_port": port, "revoke": True}) == "ok"
        assert client.info(handle)["net_in"] == []
        with pytest.raises(OSError):
            http_get("127.0.0.1", port)
        with pytest.raises(
            InvalidRequest, match=f"container {handle} forwards no host port {port}"
        ):
            client.call("net", handle, "in", {"host_port": port, "revoke": True})
        with pytest.raises(InvalidRequest, match="revoke needs the host_port"):
            client.call("net", handle, "in", {"revoke": True})
        # the port is free again
        assert client.call("net", handle, "in", {"host_port": port, "container_port": 8080}) == {
            "host_port": port,
            "container_port": 8080,
        }
        assert HTTP_PAGE in http_get("127.0.0.1", port)
    finally:
        client.destroy(handle)
    assert net_leftovers(daemon, handle) == {"devices": [], "rules": [], "addresses": []}


def test_a_forward_bound_to_one_host_address_answers_only_there(
    client: Client, outside: Outside
) -> None:
    handle = client.create()
    try:
        start_httpd(client, handle, 8080)
        reply = client.call(
            "net", handle, "in", {"container_port": 8080, "host_address": "127.0.0.1"}
        )
        port = reply["host_port"]
        assert reply == {"host_port": port, "container_port": 8080, "host_address": "127.0.0.1"}
        assert HTTP_PAGE in http_get("127.0.0.1", port)
        # not on the host's address on the outside link, from outside or from the host
        done = outside.python(GET.format(ip=outside.host_ip, port=port))
        assert HTTP_PAGE not in done.stdout
        with pytest.raises(OSError):
            http_get(outside.host_ip, port)
        assert client.info(handle)["net_in"] == [reply]
        for address, words in [
            ("192.0.2.1", "host_address 192.0.2.1 is not an address of this host"),
            ("localhost", "host_address 'localhost' is not an IPv4 address"),
        ]:
            with pytest.raises(InvalidRequest, match=words):
                client.call("net", handle, "in", {"host_address": address})
        assert client.info(handle)["net_in"] == [reply]
    finally:
        client.destroy(handle)
