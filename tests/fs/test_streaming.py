"""Large copies stream: the daemon's memory does not grow with the size copied; destroy abandons a copy."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, leftovers

MB = 1024 * 1024


def _rss(daemon: Daemon) -> int:
    assert daemon.process is not None
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_large_copy_does_not_grow_the_daemon(
    daemon: Daemon, client: Client, container: str, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(160 * MB)
    before = _rss(daemon)
    client.call("copy", container, "in", str(big), "/tmp/big")
    client.call("copy", container, "out", "/tmp/big", str(tmp_path / "back"))
    assert (tmp_path / "back").stat().st_size == 160 * MB
    assert _rss(daemon) - before < 16 * MB


def test_destroy_during_a_copy_leaves_nothing(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(512 * MB)
    handle = client.create({"disk_size_mb": 1024})
    outcome: list[object] = []

    def copy() -> None:
        with daemon.client() as c:
            try:
                outcome.append(c.call("copy", handle, "in", str(big), "/tmp/big"))
            except errors.CorralError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=copy)
    thread.start()
    client.run(handle, "sleep 0.2")
    client.destroy(handle)
    thread.join(60)
    assert outcome and (outcome[0] == "ok" or isinstance(outcome[0], errors.CorralError))
    assert leftovers(daemon)["mounts"] == []
    assert not (daemon.depot / handle).exists()
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True)
    assert str(daemon.dir) not in losetup.stdout
