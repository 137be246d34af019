"""The launcher tells the daemon its network namespace before the spec is sent."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import trio

from plugins.isolation.launcher import Launcher

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")

SIOCGSKNS = 0x894C


def test_network_namespace_is_reported_before_the_spec(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    init, _ = artifacts
    host = os.stat("/proc/self/ns/net").st_ino

    async def main() -> None:
        launcher = Launcher(init, tmp_path)
        try:
            with trio.fail_after(10):
                namespace = await launcher.network_namespace()
            assert namespace is not None
            assert launcher.pid is not None  # still waiting for its spec
            netns = os.fstat(namespace.fd).st_ino
            assert netns == os.stat(f"/proc/{launcher.pid}/ns/net").st_ino != host
            # The route socket was opened in that namespace (SIOCGSKNS: the socket's namespace).
            socket_netns = fcntl.ioctl(namespace.route_socket, SIOCGSKNS)
            try:
                assert os.fstat(socket_netns).st_ino == netns
            finally:
                os.close(socket_netns)
            assert await launcher.network_namespace() == namespace  # asked again: the same
        finally:
            launcher.close()
        for fd in (namespace.fd, namespace.route_socket):
            with pytest.raises(OSError):
                os.fstat(fd)  # closed with the launcher

    trio.run(main)


def test_a_launcher_that_dies_early_reports_no_namespace(tmp_path: Path) -> None:
    async def main() -> None:
        launcher = Launcher(Path("/bin/true"), tmp_path)  # exits without unsharing
        try:
            with trio.fail_after(10):
                assert await launcher.network_namespace() is None
        finally:
            launcher.close()

    trio.run(main)
