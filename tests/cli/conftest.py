"""The ``corral`` CLI as a user runs it: a subprocess of this checkout's code (cwd = the
repository) against a private daemon, TTY cases under a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.client import Client
from tests.cli.paths import cli
from tests.conftest import REPO, Daemon


def command(daemon: Daemon, *args: str) -> list[str]:
    """``corral -s SOCKET ARGS`` (the Python CLI or the C front: tests/cli/paths.py)."""
    return [*cli(), "-s", str(daemon.socket), *args]


def corral(
    daemon: Daemon, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``corral ARGS``; its exit status, stdout and stderr."""
    return subprocess.run(
        command(daemon, *args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def ok(daemon: Daemon, *args: str) -> str:
    """``corral ARGS``'s stdout; it must exit 0 and say nothing on stderr."""
    done = corral(daemon, *args)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def no_traceback(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a user's mistake prints (never a traceback)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("corral: "), done.stderr
    return lines[0]


def gone(client: Client, handle: str) -> bool:
    return handle not in client.list()


@pytest.fixture
def name(client: Client) -> Iterator[str]:
    """A unique handle for the test's container; destroyed at the end whatever happened."""
    handle = f"cli-{uuid.uuid4().hex[:8]}"
    yield handle
    try:
        client.destroy(handle)
    except Exception:
        pass


class Terminal:
    """``corral ARGS`` on a pseudo-terminal of its own (its stdin, stdout and stderr)."""

    def __init__(self, argv: list[str], rows: int = 24, cols: int = 80) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the CLI
            os.chdir(REPO)
            os.execv(argv[0], argv)
        self.resize(rows, cols, signal_child=False)
        self.seen = b""
        self.status: int | None = None

    def resize(self, rows: int, cols: int, signal_child: bool = True) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if signal_child:
            os.kill(self.pid, signal.SIGWINCH)  # what the kernel sends a foreground group

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, text: str, timeout: float = 20) -> str:
        """Read until *text* has been printed; everything read so far."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"waited for {text!r}; the terminal shows {self.seen!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the CLI exited and closed the terminal
                    data = b""
                assert data, f"the CLI ended before {text!r}: {self.seen!r}"
                self.seen += data
        return self.seen.decode(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        """The CLI's exit status (what it printed meanwhile is read on)."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, f"the CLI did not exit: {self.seen!r}"
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    pass
        return self.status

    def attrs(self) -> list[Any]:
        return termios.tcgetattr(self.fd)

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
        os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[Any]:
    """``terminal(argv)`` opens a :class:`Terminal`; every one is closed at the end."""
    opened: list[Terminal] = []

    def open_(argv: list[str], rows: int = 24, cols: int = 80) -> Terminal:
        opened.append(Terminal(argv, rows, cols))
        return opened[-1]

    yield open_
    for t in opened:
        t.close()
