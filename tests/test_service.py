"""corrald as a systemd service: the readiness protocol (``sd_notify``)."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor import sdnotify
from tests.conftest import Daemon

# -- readiness ---------------------------------------------------------------------------------


def test_nothing_is_sent_without_a_service_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sdnotify.ENV, raising=False)
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv(sdnotify.ENV, "")
    assert not sdnotify.notify("READY=1")


def test_an_unusable_address_is_no_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(sdnotify.ENV, "vsock:2:1234")  # not for a host daemon
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv(sdnotify.ENV, str(tmp_path / "nobody"))
    assert not sdnotify.notify("READY=1")


@pytest.mark.parametrize("namespace", ["path", "abstract"])
def test_ready_once_the_socket_answers_then_stopping_on_sigterm(
    artifacts: tuple[Path, Path], namespace: str
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if namespace == "path":
        address = str(workdir / "notify.sock")
        manager.bind(address)
    else:
        address = f"@corral-test-notify-{workdir.name}"
        manager.bind("\0" + address[1:])
    d = Daemon(*artifacts, env={sdnotify.ENV: address}, workdir=workdir)
    seen: list[Any] = []

    def service_manager() -> None:
        """Receive the first datagram and at once ask the daemon for a pong."""
        try:
            message = manager.recv(4096)
        except OSError as exc:
            seen.append(exc)
            return
        try:
            with d.client(timeout=5) as c:
                answer: Any = c.ping()
        except OSError as exc:  # READY=1 came before the socket listened
            answer = exc
        seen.append((message, answer))

    try:
        manager.settimeout(30)
        receiver = threading.Thread(target=service_manager)
        receiver.start()
        d.start()
        receiver.join(30)
        assert seen == [(b"READY=1", "pong")]
        manager.settimeout(0)
        with pytest.raises(BlockingIOError):
            manager.recv(4096)  # READY=1 once, and nothing else while it serves
        assert d.terminate() == 0
        manager.settimeout(5)
        assert manager.recv(4096) == b"STOPPING=1"
    finally:
        manager.close()
        d.close()
