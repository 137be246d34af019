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
from tests.conftest import waiting_launchers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")

SIOCGSKNS = 0x894C


def test_network_namespace_is_reported_before_the_spec(
    artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    init, _ = artifacts
    host = os.stat("/proc/self/ns/net").st_ino

    async def main() -> None:
        launcher = Launcher(init)
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
        launcher = Launcher(Path("/bin/true"))  # exits without unsharing
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
        launcher = Launcher(init, zygote)
        try:
            assert launcher.pid is None  # the zygote's child, not ours
            with trio.fail_after(10):
                namespace = await launcher.network_namespace()
            assert namespace is not None
            # Labelled by its spec, its cmdline reads as `corral-init launch LABEL`
            # (the daemon finds inits by it).
            launcher.send(b"label\t%s\n" % bytes(label))
            labelled: list[str] = []
            with trio.fail_after(10):
                while not labelled:
                    await trio.sleep(0.01)
                    labelled = [
                        pid
                        for pid in os.listdir("/proc")
                        if pid.isdigit()
                        and _argv(pid)[:3] == [str(init).encode(), b"launch", bytes(label)]
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


def test_the_launcher_forked_ahead_is_used_once_and_replaced_if_it_died(
    artifacts: tuple[Path, Path],
) -> None:
    init, _ = artifacts
    zygote = Zygote(init)

    async def main() -> None:
        zygote.fork_ahead()
        assert zygote.pid is not None
        with trio.fail_after(10):
            while not waiting_launchers(zygote.pid):
                await trio.sleep(0.01)
        ahead = waiting_launchers(zygote.pid)
        assert len(ahead) == 1
        zygote.fork_ahead()  # one waits already: no second
        first = zygote.launcher()
        try:
            with trio.fail_after(10):
                namespace = await first.network_namespace()
            assert namespace is not None
            # The waiting launcher made its network namespace already.
            assert os.fstat(namespace.fd).st_ino == os.stat(f"/proc/{ahead[0]}/ns/net").st_ino
        finally:
            first.close()
        with trio.fail_after(10):  # closed without a spec, it exits (at EOF)
            while ahead[0] in waiting_launchers(zygote.pid):
                await trio.sleep(0.01)

        zygote.fork_ahead()
        with trio.fail_after(10):
            while not waiting_launchers(zygote.pid):
                await trio.sleep(0.01)
        (dead,) = waiting_launchers(zygote.pid)
        dead_netns = os.stat(f"/proc/{dead}/ns/net").st_ino
        os.kill(dead, signal.SIGKILL)
        with trio.fail_after(10):
            while dead in waiting_launchers(zygote.pid):
                await trio.sleep(0.01)
        second = zygote.launcher()
        try:
            with trio.fail_after(10):
                namespace = await second.network_namespace()
            assert namespace is not None
            assert os.fstat(namespace.fd).st_ino != dead_netns  # a new one, not the dead
        finally:
            second.close()

    try:
        trio.run(main)
    finally:
        zygote.close()
