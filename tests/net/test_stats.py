"""``info.net_stat``: the traffic of a container's veth, as the container sees it."""

from __future__ import annotations

from pathlib import Path

from plugins.net import links
from supervisor.client import Client
from supervisor.depot import read_record
from tests.conftest import Daemon


def _host_end(daemon: Daemon, handle: str) -> dict[str, int]:
    """The counters of the host end of the container's veth, read from sysfs."""
    record = read_record(daemon.depot / handle)
    assert record is not None
    statistics = Path("/sys/class/net") / record["plugins"]["net"]["device"] / "statistics"
    return {
        name: int((statistics / name).read_text())
        for name in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
    }


def test_net_stat_counts_the_containers_traffic_from_its_side(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    try:
        before = client.info(handle)["net_stat"]
        assert set(before) == {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets"}
        gateway = client.info(handle)["host_ip"]
        # The host drops the echo requests (no host access), but its end of the veth has
        # received them: the container sent them.
        client.run(handle, f"ping -c 3 -W 1 {gateway}", privileged=True)
        host_before = _host_end(daemon, handle)
        after = client.info(handle)["net_stat"]
        host_after = _host_end(daemon, handle)
        assert after["tx_packets"] >= before["tx_packets"] + 3
        assert after["tx_bytes"] >= before["tx_bytes"] + 3 * 84  # 20 IP + 8 ICMP + 56 data
        # The host end's counters, swapped (read around info: a late ARP probe may pass).
        swapped = {"rx_bytes": "tx_bytes", "tx_bytes": "rx_bytes"}
        swapped |= {"rx_packets": "tx_packets", "tx_packets": "rx_packets"}
        for key, counter in swapped.items():
            assert host_before[counter] <= after[key] <= host_after[counter], key
    finally:
        client.destroy(handle)


def test_one_read_of_proc_net_dev_gives_what_sysfs_gives(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    try:
        record = read_record(daemon.depot / handle)
        assert record is not None
        device = record["plugins"]["net"]["device"]
        client.run(handle, f"ping -c 2 -W 1 {client.info(handle)['host_ip']}", privileged=True)
        before = links.container_traffic(device)
        both = links.all_traffic({device, "nosuchdevice0"})
        after = links.container_traffic(device)
        for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
            low, read, high = before[key], both[device][key], after[key]
            assert low is not None and read is not None and high is not None, key
            assert 0 < low <= read <= high, key
        assert both["nosuchdevice0"] == dict.fromkeys(before)  # gone: every value None
    finally:
        client.destroy(handle)
