"""Helpers of the ``contain`` and ``launch`` tests: the CLI as a subprocess of a test
daemon, a chroot directory of the base rootfs, a test subnet of the daemon's own."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
import zlib
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from tests.cli.paths import cli
from tests.conftest import REPO, Daemon


def corral(daemon: Daemon, *args: str) -> list[str]:
    """The command line of the CLI talking to *daemon* (Python's or the C front's:
    tests/cli/paths.py)."""
    return [*cli(), "-s", str(daemon.socket), *args]


def run(daemon: Daemon, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 60)
    return subprocess.run(corral(daemon, *args), cwd=REPO, capture_output=True, text=True, **kwargs)


def start(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    """The CLI running, its stdin, stdout and stderr pipes (stdout unbuffered: see
    :func:`readline`)."""
    return subprocess.Popen(
        corral(daemon, *args),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def readline(process: subprocess.Popen[str], timeout: float = 20) -> str:
    """The next line *process* prints, waited for at most *timeout* seconds (read a byte
    at a time from the pipe, so that nothing waits in a buffer select cannot see)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no whole line within {timeout} s (got {line!r})"
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line.decode()


def make_chroot(artifacts: tuple[Path, Path], where: Path) -> Path:
    """A copy of the base rootfs at *where*: a directory a client owns."""
    shutil.copytree(artifacts[1], where, symlinks=True)
    return where


def daemon_subnet(daemon: Daemon) -> IPv4Network:
    """A /24 of 192.168.0.0/16 (the default bridge_networks) this daemon alone uses."""
    h = zlib.crc32(str(daemon.dir).encode())
    return IPv4Network(f"192.168.{100 + h % 150}.0/24")


def wait_gone(daemon: Daemon, timeout: float = 10) -> list[str]:
    """The daemon's containers, once there are none (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    with daemon.client() as client:
        while (left := client.list()) and time.monotonic() < deadline:
            time.sleep(0.05)
    return left
