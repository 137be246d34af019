"""The daemon process: socket permissions, stale sockets, one daemon per depot, bad config."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Daemon, live_children


def test_socket_is_root_only(daemon: Daemon) -> None:
    mode = daemon.socket.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0
    assert not stat.S_IMODE(daemon.socket.parent.stat().st_mode) & 0o002


def test_stale_socket_is_replaced(fresh_daemon: Daemon) -> None:
    fresh_daemon.kill9()
    assert fresh_daemon.socket.exists()  # left behind by the dead daemon
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        assert c.ping() == "pong"


def test_second_daemon_on_the_same_socket_or_depot_refuses(daemon: Daemon) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.daemon", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "another corrald" in result.stderr
    with daemon.client() as c:  # the first one is untouched
        assert c.ping() == "pong"


def test_bad_config_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[containers]\ngrace_tme = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "grace_tme: unknown setting" in result.stderr


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigint_stops_cleanly(fresh_daemon: Daemon) -> None:
    assert fresh_daemon.process is not None
    # The zygote, and the launcher it forked ahead for the next container, go too.
    helpers = live_children(fresh_daemon.process.pid)
    deadline = time.monotonic() + 10
    while not any(live_children(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.02)
        helpers = live_children(fresh_daemon.process.pid)
    helpers += [child for pid in helpers for child in live_children(pid)]
    assert len(helpers) == 2
    fresh_daemon.process.send_signal(signal.SIGINT)
    assert fresh_daemon.process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in helpers):
        assert time.monotonic() < deadline, "the zygote or its launcher outlived the daemon"
        time.sleep(0.02)
    assert not fresh_daemon.socket.exists()
    probe = socket.socket(socket.AF_UNIX)
    try:
        assert probe.connect_ex(str(fresh_daemon.socket)) != 0
    finally:
        probe.close()
    fresh_daemon.start()  # and the next one starts on the same depot
