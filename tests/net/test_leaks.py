"""Create/destroy cycles with networking leave no device, rule or address behind."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Daemon, leftovers
from tests.net.conftest import net_leftovers, table_rules


def test_200_cycles_leave_no_veth_rule_or_address(net_daemon: Callable[..., Daemon]) -> None:
    d = net_daemon(quarantine="0")
    with d.client() as c:
        for i in range(200):
            handle = c.create({"network": {"bridge": "lan"}} if i % 10 == 5 else None)
            if i % 20 == 0:
                # Rules only; no traffic is sent to these destinations.
                c.call("net", handle, "in", {})
                c.call("net", handle, "out", "198.18.255.252/30:80", {"protocol": "tcp"})
                assert net_leftovers(d, handle)["rules"] == [handle] * 3
            c.destroy(handle)
        assert c.list() == []
    assert net_leftovers(d) == {"devices": [], "rules": [], "addresses": []}
    assert leftovers(d)["depot"] == []
    rules = table_rules(d.net["table"])
    assert rules and {r["comment"] for r in rules} == {"corral:base"}
