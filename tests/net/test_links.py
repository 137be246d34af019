"""The container end of a veth, configured over a route socket opened in the container's namespace.

Real kernel objects: a launcher's fresh network namespace (nothing else lives
in it), a veth into it, addresses from 198.18.0.0/15 (test-only, see conftest).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio

from plugins.isolation.launcher import Launcher
from plugins.net import links
from plugins.net.pool import Lease

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LEASE = Lease(IPv4Address("198.19.255.254"), IPv4Address("198.19.255.253"), 30)


def _in_namespace(pid: int, *command: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_eth0_is_configured_and_a_failure_deletes_the_veth(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    init, _ = artifacts
    device = f"tlk{secrets.token_hex(3)}"

    async def main() -> None:
        launcher = Launcher(init)
        try:
            with trio.fail_after(10):
                namespace = await launcher.network_namespace()
            assert namespace is not None and launcher.pid is not None
            await links.create_veth(device, namespace.fd, LEASE, bridge=None, mtu=1500)
            await links.configure_container_end(device, namespace.route_socket, LEASE)
            addresses = _in_namespace(launcher.pid, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
            assert f"inet {LEASE.cidr}" in addresses
            assert "UP" in _in_namespace(launcher.pid, "ip", "-o", "link", "show", "dev", "eth0")
            routes = _in_namespace(launcher.pid, "ip", "-4", "route", "show", "default")
            assert routes.split()[:5] == ["default", "via", str(LEASE.gateway), "dev", "eth0"]
            # Configured twice, the address exists already: an error, and no veth left.
            with pytest.raises(links.LinkError, match=f"eth0 of veth {device}: File exists"):
                await links.configure_container_end(device, namespace.route_socket, LEASE)
            assert not Path(f"/sys/class/net/{device}").exists()
        finally:
            launcher.close()
            await links.delete_link(device)

    trio.run(main)
