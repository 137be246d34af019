"""Pure logic of the network plugin: pools, settings, egress specs, the ruleset."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from plugins.net.pool import BridgePool, PortPool, SlotPool, SubnetPool
from plugins.net.rules import BASE_TAG, Egress, Forward, Ruleset, parse_egress
from plugins.net.settings import Settings
from supervisor.errors import InvalidRequest, NoCapacity
from supervisor.settings import ConfigError, parse_table


def parse(table: dict[str, object]) -> Settings:
    return parse_table(Settings, table, "net")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- SlotPool ---------------------------------------------------------------------


def test_slots_are_handed_out_next_fit() -> None:
    pool = SlotPool("things", 4)
    assert [pool.allocate() for _ in range(3)] == [0, 1, 2]
    pool.release(1)
    # the freed slot comes back only after the others
    assert pool.allocate() == 3
    assert pool.allocate() == 1


def test_exhausted_pool_is_no_capacity_naming_it() -> None:
    pool = SlotPool("address pool 10.0.0.0/29", 2)
    pool.allocate()
    pool.allocate()
    with pytest.raises(NoCapacity, match=r"address pool 10.0.0.0/29 is exhausted \(2 in use"):
        pool.allocate()


def test_released_slot_waits_out_the_quarantine() -> None:
    clock = FakeClock()
    pool = SlotPool("things", 1, quarantine=60, clock=clock)
    pool.allocate()
    pool.release(0)
    with pytest.raises(NoCapacity, match=r"1 in quarantine for up to 60 s after release\)"):
        pool.allocate()
    with pytest.raises(InvalidRequest, match="quarantine for 60.0 s"):
        pool.reserve(0, "slot 0")
    clock.now += 60.5
    assert pool.allocate() == 0


def test_reserve_refuses_a_taken_slot_and_force_skips_quarantine() -> None:
    clock = FakeClock()
    pool = SlotPool("things", 4, quarantine=60, clock=clock)
    pool.reserve(2, "slot 2")
    with pytest.raises(InvalidRequest, match="slot 2 is already in use"):
        pool.reserve(2, "slot 2")
    pool.release(2)
    pool.reserve(2, "slot 2", force=True)  # a restored container that held it
    assert 2 in pool


def test_release_without_quarantine_after_a_failed_create() -> None:
    pool = SlotPool("things", 1, quarantine=60, clock=FakeClock())
    pool.allocate()
    pool.release(0, quarantine=False)
    assert pool.allocate() == 0


# -- address pools ----------------------------------------------------------------


def test_subnet_pool_gives_a_slash_30_per_container() -> None:
    pool = SubnetPool(IPv4Network("10.254.0.0/22"))
    first, second = pool.allocate(), pool.allocate()
    assert (str(first.address), str(first.gateway), first.prefixlen) == (
        "10.254.0.2",
        "10.254.0.1",
        30,
    )
    assert first.cidr == "10.254.0.2/30" and first.gateway_cidr == "10.254.0.1/30"
    assert str(second.address) == "10.254.0.6"
    assert pool.slots.size == 256


def test_subnet_pool_reserves_a_requested_address() -> None:
    pool = SubnetPool(IPv4Network("10.254.0.0/22"))
    lease = pool.reserve(IPv4Address("10.254.1.10"))
    assert str(lease.gateway) == "10.254.1.9"
    with pytest.raises(InvalidRequest, match="address 10.254.1.10 is already in use"):
        pool.reserve(IPv4Address("10.254.1.10"))


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("10.254.1.9", r"cannot be a container's.*e.g. 10.254.1.10"),
        ("10.254.1.8", "cannot be a container's"),
        ("10.254.1.11", "cannot be a container's"),
        ("10.9.0.2", "not in the address pool 10.254.0.0/22"),
    ],
)
def test_subnet_pool_refuses_addresses_that_cannot_be_a_containers(
    address: str, words: str
) -> None:
    pool = SubnetPool(IPv4Network("10.254.0.0/22"))
    with pytest.raises(InvalidRequest, match=words):
        pool.reserve(IPv4Address(address))


def test_subnet_pool_release_and_quarantine() -> None:
    clock = FakeClock()
    pool = SubnetPool(IPv4Network("10.0.0.0/30"), quarantine=5, clock=clock)
    lease = pool.allocate()
    with pytest.raises(NoCapacity, match="address pool 10.0.0.0/30"):
        pool.allocate()
    pool.release(lease)
    with pytest.raises(NoCapacity):
        pool.allocate()
    clock.now += 6
    assert pool.allocate() == lease


def test_bridge_pool_keeps_gateway_network_and_broadcast() -> None:
    pool = BridgePool("lan", IPv4Network("192.168.2.0/29"))
    leases = [pool.allocate() for _ in range(5)]
    assert [str(lease.address) for lease in leases] == [f"192.168.2.{i}" for i in range(2, 7)]
    assert {str(lease.gateway) for lease in leases} == {"192.168.2.1"}
    assert {lease.prefixlen for lease in leases} == {29}
    with pytest.raises(NoCapacity, match="bridge lan"):
        pool.allocate()
    for bad, words in [
        ("192.168.2.1", "gateway"),
        ("192.168.2.7", "not a host address"),
        ("192.168.3.2", "not in bridge lan's subnet"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            pool.slot_of(IPv4Address(bad))


def test_bridge_pool_reserves_the_address_asked_for() -> None:
    pool = BridgePool("lan", IPv4Network("192.168.2.0/24"))
    assert str(pool.reserve(IPv4Address("192.168.2.17")).address) == "192.168.2.17"
    assert str(pool.allocate().address) == "192.168.2.2"


def test_bridge_pool_with_another_gateway_skips_it() -> None:
    pool = BridgePool("odlan", IPv4Network("192.168.2.0/29"), gateway=IPv4Address("192.168.2.3"))
    leases = [pool.allocate() for _ in range(5)]
    assert [str(lease.address) for lease in leases] == [
        "192.168.2.1",
        "192.168.2.2",
        "192.168.2.4",
        "192.168.2.5",
        "192.168.2.6",
    ]
    assert {str(lease.gateway) for lease in leases} == {"192.168.2.3"}
    with pytest.raises(NoCapacity):
        pool.allocate()
    with pytest.raises(InvalidRequest, match="gateway"):
        pool.slot_of(IPv4Address("192.168.2.3"))
    with pytest.raises(ValueError, match="no host address"):
        BridgePool("x", IPv4Network("192.168.2.0/29"), gateway=IPv4Address("192.168.2.7"))


@pytest.mark.parametrize(
    ("subnet", "name"),
    [
        ("192.168.77.0/24", "c0a84d24"),
        ("192.168.0.0/16", "c0a816"),
        ("192.168.2.16/28", "c0a802128"),
    ],
)
def test_the_name_of_a_bridge_made_on_demand_tells_its_subnet(subnet: str, name: str) -> None:
    assert parse({}).on_demand_name(IPv4Network(subnet)) == name


# -- ports --------------------------------------------------------------------------


def test_port_pool_hands_out_the_range_then_is_exhausted() -> None:
    ports = PortPool(61001, 61002)
    assert [ports.allocate(), ports.allocate()] == [61001, 61002]
    with pytest.raises(NoCapacity, match="port range 61001-61002"):
        ports.allocate()
    ports.release(61001)
    assert ports.allocate() == 61001


def test_explicit_ports_inside_and_outside_the_range() -> None:
    ports = PortPool(61001, 61002)
    ports.reserve(61001)
    ports.reserve(8080)
    with pytest.raises(InvalidRequest, match="host port 8080 is already forwarded"):
        ports.reserve(8080)
    assert ports.allocate() == 61002  # the explicit 61001 is not handed out again
    ports.release(8080)
    ports.reserve(8080)


# -- settings -------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = parse({})
    assert s == Settings()
    assert (s.table, str(s.pool), s.port_range, s.quarantine) == (
        "corral",
        "10.254.0.0/22",
        (61001, 65000),
        60.0,
    )
    assert s.veth_name(0xABCDE) == "crlvabcde" and len(s.veth_name(0xFFFFF)) <= 15


def test_settings_overrides() -> None:
    s = parse(
        {
            "table": "t1",
            "pool": "10.9.0.0/24",
            "interface_prefix": "abc",
            "port_range": "100-200",
            "quarantine": 0,
            "bridges": {"lan": "192.168.2.0/24"},
            "allow_networks": ["198.51.100.0/24"],
            "allow_host_access": True,
        }
    )
    assert s.port_range == (100, 200)
    assert s.bridges == {"lan": IPv4Network("192.168.2.0/24")}
    assert s.bridge_device("lan") == "abcblan"
    assert s.allow_networks == (IPv4Network("198.51.100.0/24"),)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"poool": "x"}, r"poool: unknown setting"),
        ({"pool": "10.0.0.0/31"}, r"pool: .* smaller than one /30"),
        ({"pool": "banana"}, r"pool: 'banana' is not an IPv4 network"),
        ({"port_range": [5, 1]}, "port_range"),
        ({"port_range": [1, 70000]}, "port_range"),
        ({"quarantine": -1}, "quarantine"),
        ({"interface_prefix": "much-too-long"}, "interface_prefix"),
        ({"table": "bad name"}, "table"),
        ({"bridges": {"averyveryverylongname": "192.168.2.0/24"}}, "bridges.averyveryverylongname"),
        ({"bridges": {"lan": "10.254.1.0/24"}}, "bridges.lan: 10.254.1.0/24 overlaps pool"),
        ({"allow_networks": ["x"]}, r"allow_networks: \[0\]: 'x' is not an IPv4 network"),
        ({"allow_host_access": "yes"}, "allow_host_access"),
        ({"bridge_networks": "192.168.0.0/16"}, "bridge_networks: must be a list"),
    ],
)
def test_settings_errors_name_the_setting(table: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(table)


# -- egress specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "protocol", "expected"),
    [
        ("198.18.0.2", "all", Egress(IPv4Network("198.18.0.2/32"), None, "all")),
        ("198.18.0.0/30:80", "tcp", Egress(IPv4Network("198.18.0.0/30"), (80, 80), "tcp")),
        (
            "198.18.0.7/24:1000-2000",
            "udp",
            Egress(IPv4Network("198.18.0.0/24"), (1000, 2000), "udp"),
        ),
        ("0.0.0.0/0", "icmp", Egress(IPv4Network("0.0.0.0/0"), None, "icmp")),
        (
            "198.18.0.5-198.18.0.9:53",
            "udp",
            Egress(IPv4Network("198.18.0.5/32"), (53, 53), "udp", IPv4Address("198.18.0.9")),
        ),
    ],
)
def test_parse_egress(spec: str, protocol: str, expected: Egress) -> None:
    assert parse_egress(spec, protocol) == expected
    assert Egress.from_json(expected.to_json()) == expected


@pytest.mark.parametrize(
    ("spec", "protocol", "words"),
    [
        ("nowhere", "tcp", "'nowhere' is not an IPv4 address"),
        ("1.2.3.4:0", "tcp", "port '0'"),
        ("1.2.3.4:80-70", "tcp", "port range 80-70 is empty"),
        ("1.2.3.4:80", "icmp", "ICMP has no ports"),
        ("1.2.3.4", "sctp", "protocol 'sctp'"),
        (42, "tcp", "must be a string"),
        ("1.2.3.9-1.2.3.4", "tcp", "the range 1.2.3.9-1.2.3.4 is empty"),
        ("1.2.3.4-x", "tcp", "is not an IPv4 address, network or range FIRST-LAST"),
    ],
)
def test_parse_egress_errors(spec: object, protocol: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        parse_egress(spec, protocol)


def test_icmp_type_and_code_and_log() -> None:
    allow = parse_egress("1.2.3.4", "icmp", icmp_type=8, icmp_code=0, log=True)
    assert (allow.icmp_type, allow.icmp_code, allow.log) == (8, 0, True)
    assert Egress.from_json(allow.to_json()) == allow
    expr = repr(_rules(Ruleset(parse({})).egress("h1", "crlv0", IPv4Address("10.254.0.2"), allow)))
    assert "'field': 'type'}}, 'right': 8" in expr and "'field': 'code'}}, 'right': 0" in expr
    assert "'log': {'prefix': 'corral-out h1 '}" in expr
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"icmp_type": 8}, "icmp_type and icmp_code need protocol icmp"),
        ({"icmp_type": 256}, "icmp_type 256 is not a number from 0 to 255"),
        ({"icmp_code": 0}, "need protocol icmp"),
    ]
    for kwargs, words in refusals:
        with pytest.raises(InvalidRequest, match=words):
            parse_egress("1.2.3.4", "tcp", **kwargs)
    with pytest.raises(InvalidRequest, match="icmp_code needs an icmp_type"):
        parse_egress("1.2.3.4", "icmp", icmp_code=0)


# -- ruleset -------------------------------------------------------------------------------


def _rules(cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]


def test_base_ruleset_is_scoped_to_corral_devices_and_subnets() -> None:
    s = parse({"interface_prefix": "crl", "bridges": {"lan": "192.168.2.0/24"}})
    cmds = Ruleset(s).base()
    # replaces the table in one transaction, whether or not it existed
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]
    rules = _rules(cmds)
    assert all(r["comment"] == BASE_TAG for r in rules)
    for rule in rules:
        text = repr(rule["expr"])
        # every rule names Corral's devices or its own subnets
        assert "crl" in text, rule
    masquerade = [r for r in rules if "masquerade" in repr(r["expr"])]
    assert len(masquerade) == 3
    chains = {
        c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})
    }
    assert all(c.get("policy", "accept") == "accept" for c in chains.values())


def test_allow_host_access_drops_the_input_rules_but_the_loopback_one() -> None:
    closed = _rules(Ruleset(parse({})).base())
    open_ = _rules(Ruleset(parse({"allow_host_access": True})).base())
    assert len([r for r in closed if r["chain"] == "input"]) == 3
    (loopback,) = [r for r in open_ if r["chain"] == "input"]
    assert "127.0.0.0" in repr(loopback["expr"]) and "drop" in loopback["expr"][-1]


def test_container_rules_are_tagged_with_the_handle() -> None:
    r = Ruleset(parse({}))
    cmds = r.container(
        "h1",
        "crlv0",
        IPv4Address("10.254.0.2"),
        [Forward(61001, 80)],
        [parse_egress("1.2.3.4:53", "all")],
    )
    rules = _rules(cmds)
    assert [x["chain"] for x in rules] == ["prerouting", "output", "egress"]
    assert {x["comment"] for x in rules} == {"h1"}
    listing = [{"rule": {**x, "handle": i}} for i, x in enumerate(rules)] + [
        {"rule": {"chain": "egress", "comment": "h2", "handle": 9}}
    ]
    deletes = r.delete_tagged(listing, "h1")
    assert [d["delete"]["rule"]["handle"] for d in deletes] == [0, 1, 2]


def test_a_forward_record_of_before_host_addresses_still_reads() -> None:
    assert Forward.from_json([61001, 80]) == Forward(61001, 80)
    bound = Forward(61002, 80, IPv4Address("127.0.0.1"))
    assert Forward.from_json(bound.to_json()) == bound
    expr = repr(_rules(Ruleset(parse({})).forward("h1", bound, IPv4Address("10.254.0.2"))))
    assert "'daddr'}}, 'right': '127.0.0.1'" in expr and "fib" not in expr
