"""Bind mounts from the create CONFIG: read-only stays read-only; targets resolve inside the root."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, live_children, waiting_launchers

CAP_SYS_ADMIN = 21


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    (d / "file").write_text("host\n")
    return d


@pytest.fixture
def evil_rootfs(artifacts: tuple[Path, Path], tmp_path: Path) -> Iterator[Path]:
    """A copy of the base rootfs with symlinks leading out of it if followed on the host."""
    root = tmp_path / "evilroot"
    subprocess.run(["cp", "-a", str(artifacts[1]), str(root)], check=True)
    (root / "evil").symlink_to("/etc")
    (root / "evil-up").symlink_to("../../../../../../../../etc")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_read_only_bind_cannot_be_written_or_remounted(client: Client, shared: Path) -> None:
    handle = client.create({"bind_mounts": [[str(shared), "/mnt/ro", {"mode": "ro"}]]})
    try:
        status, out, _ = client.run(handle, "grep CapEff /proc/self/status", privileged=True)
        assert status == 0
        assert not int(out.split()[1], 16) & (1 << CAP_SYS_ADMIN)
        assert client.run(handle, "cat /mnt/ro/file")[1] == "host\n"
        for script in (
            "touch /mnt/ro/new",
            "echo x > /mnt/ro/file",
            "mount -o remount,rw /mnt/ro",
            "mount -o remount,rw,bind /mnt/ro",
            "umount /mnt/ro",
        ):
            status, _, _ = client.run(handle, script, privileged=True)
            assert status != 0, script
        status, out, _ = client.run(
            handle, "touch /mnt/ro/new2 2>&1; grep ' /mnt/ro ' /proc/mounts"
        )
        assert " ro," in out and "nosuid" in out and "nodev" in out
        with pytest.raises(errors.InvalidRequest) as info:
            client.call("copy", handle, "in", str(shared / "file"), "/mnt/ro/copied")
        assert "Read-only file system" in str(info.value)
    finally:
        client.destroy(handle)
    assert sorted(p.name for p in shared.iterdir()) == ["file"]
    assert (shared / "file").read_text() == "host\n"


def test_read_write_bind_and_order(client: Client, shared: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "inner").write_text("inner\n")
    handle = client.create(
        {
            "bind_mounts": [
                [str(shared), "/mnt/rw", {"mode": "rw"}],
                [str(other / "inner"), "/mnt/rw/inner-file", {"mode": "ro"}],
            ]
        }
    )
    try:
        assert client.run(handle, "echo c > /mnt/rw/from-container", privileged=True)[0] == 0
        assert client.run(handle, "cat /mnt/rw/inner-file")[1] == "inner\n"
    finally:
        client.destroy(handle)
    assert (shared / "from-container").read_text() == "c\n"


def test_bind_target_through_symlink_stays_in_the_container(
    client: Client, shared: Path, evil_rootfs: Path
) -> None:
    name = f"corral-bind-{uuid.uuid4().hex[:8]}"
    handle = client.create(
        {
            "rootfs": str(evil_rootfs),
            "bind_mounts": [
                [str(shared), f"/evil/{name}", {"mode": "ro"}],
                [str(shared / "file"), f"/evil-up/{name}.file", {"mode": "ro"}],
            ],
        }
    )
    try:
        assert not Path(f"/etc/{name}").exists()
        assert not Path(f"/etc/{name}.file").exists()
        status, out, _ = client.run(handle, f"cat /etc/{name}/file /etc/{name}.file")
        assert (status, out) == (0, "host\nhost\n")
    finally:
        client.destroy(handle)
    assert not Path(f"/etc/{name}").exists()
    assert not (evil_rootfs / "etc" / name).exists()  # made in the writable layer, not the base


@pytest.mark.parametrize(
    ("mounts", "named"),
    [
        ([["/nonexistent-host-dir", "/mnt"]], "/nonexistent-host-dir"),
        ([["relative", "/mnt"]], "relative"),
        ([["/tmp", "relative"]], "relative"),
        ([["/tmp", "/"]], "'/'"),
        ([["/tmp", "/mnt/../etc"]], "/mnt/../etc"),
        ([["/tmp", "/mnt", {"mode": "rwx"}]], "mode"),
    ],
)
def test_bad_bind_mounts_are_rejected(client: Client, mounts: list, named: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        client.create({"bind_mounts": mounts})
    assert named in str(info.value)


def test_a_host_mount_made_while_the_next_launcher_waits_is_seen(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    """The launcher forked ahead copies the host's mounts only when its spec comes."""
    assert daemon.process is not None
    client.destroy(client.create())  # its clean-up forks the next container's launcher
    deadline = time.monotonic() + 10
    while not [
        pid for zygote in live_children(daemon.process.pid) for pid in waiting_launchers(zygote)
    ]:
        assert time.monotonic() < deadline, "no launcher was forked ahead"
        time.sleep(0.02)
    later = tmp_path / "later"
    later.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "later", str(later)], check=True)
    try:
        (later / "file").write_text("mounted after\n")
        handle = client.create({"bind_mounts": [[str(later), "/mnt/later"]]})
        try:
            assert client.run(handle, "cat /mnt/later/file")[1] == "mounted after\n"
        finally:
            client.destroy(handle)
    finally:
        subprocess.run(["umount", str(later)], check=True)


@pytest.fixture
def hostile_rootfs(artifacts: tuple[Path, Path], tmp_path: Path) -> Iterator[Path]:
    """A copy of the base rootfs whose /dev is a file: no mount point for the container's /dev."""
    root = tmp_path / "hostileroot"
    subprocess.run(["cp", "-a", str(artifacts[1]), str(root)], check=True)
    (root / "dev").rmdir()
    (root / "dev").write_text("not a directory\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_hostile_rootfs_is_an_invalid_request_naming_the_reason(
    client: Client, hostile_rootfs: Path
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        client.create({"rootfs": str(hostile_rootfs)})
    assert "root filesystem" in info.value.message and "/dev: Not a directory" in info.value.message
    assert client.ping() == "pong"


@pytest.mark.parametrize(
    "target, reason",
    [
        ("/bin/busybox/x", "mkdir /bin/busybox/x: Not a directory"),  # through a file
        ("/dev/null", "on /dev/null: Not a directory"),  # a directory onto a device
    ],
)
def test_impossible_bind_target_is_an_invalid_request_naming_the_reason(
    client: Client, shared: Path, target: str, reason: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        client.create({"bind_mounts": [[str(shared), target]]})
    assert reason in info.value.message, info.value.message
    assert client.ping() == "pong"
