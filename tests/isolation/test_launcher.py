"""The launcher tells the daemon its network namespace before the spec is sent."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest
import trio

from plugins.isolation.launcher import Launcher, Zygote

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


def _argv(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_zygote_forks_launchers_labelled_as_if_exec_d_and_comes_back_after_a_kill(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    init, _ = artifacts
    zygote = Zygote(init)

    async def launch_one(label: Path) -> None:
        launcher = Launcher(init, label, zygote)
        try:
            assert launcher.pid is None  # the zygote's child, not ours
            with trio.fail_after(10):
                namespace = await launcher.network_namespace()
            assert namespace is not None
            # Its cmdline reads as `corral-init launch LABEL` (the daemon finds inits by it).
            labelled = [
                pid
                for pid in os.listdir("/proc")
                if pid.isdigit() and _argv(pid)[:3] == [str(init).encode(), b"launch", bytes(label)]
            ]
            assert len(labelled) == 1
            netns = os.stat(f"/proc/{labelled[0]}/ns/net").st_ino
            assert netns == os.fstat(namespace.fd).st_ino
        finally:
            launcher.close()

    async def main() -> None:
        await launch_one(tmp_path / "first")
        assert zygote.pid is not None
        first = zygote.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _state(first) != "Z" and time.monotonic() < deadline:
            await trio.sleep(0.01)
        await launch_one(tmp_path / "second")  # through a new zygote
        assert zygote.pid not in (None, first)

    try:
        trio.run(main)
    finally:
        zygote.close()
