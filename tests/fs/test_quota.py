"""disk_size_mb: the writable layer is a filesystem of that size, mounted only inside the container."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from plugins.fs import quota
from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, leftovers

MB = 1024 * 1024


def _loops_of(daemon: Daemon) -> list[str]:
    # By the daemon's unique directory name: a loop device mounted in a container's mount
    # namespace shows its file from the root of the depot's filesystem, which may not be /.
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"/{daemon.dir.name}/" in line]


def test_writing_past_the_limit_fails_with_enospc_inside_only(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create({"disk_size_mb": 64})
    try:
        assert client.call("limit", handle, "disk") == 64
        host_before = os.statvfs(daemon.dir)
        status, out, err = client.run(
            handle, "dd if=/dev/zero of=/tmp/big bs=1M count=100 2>&1; echo rc=$?"
        )
        assert "No space left on device" in out and "rc=1" in out, out
        image = daemon.depot / handle / "disk.img"
        assert image.stat().st_size == 64 * MB
        assert image.stat().st_blocks * 512 <= 64 * MB
        host_after = os.statvfs(daemon.dir)
        # the host lost at most the image's size, not the 100 MB asked for
        assert (host_before.f_bavail - host_after.f_bavail) * host_after.f_frsize < 70 * MB
        stat = client.info(handle)["disk_stat"]
        assert stat["limit"] == 64 * MB and 50 * MB < stat["bytes_used"] <= 64 * MB
        assert client.run(handle, "rm /tmp/big && echo ok > /tmp/small && cat /tmp/small") == [
            0,
            "ok\n",
            "",
        ]
        assert client.info(handle)["disk_stat"]["bytes_used"] < 5 * MB
        # only the container's namespace holds the mount
        assert not [
            line
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(daemon.dir) in line
        ]
        assert len(_loops_of(daemon)) == 1
    finally:
        client.destroy(handle)
    # The loop device goes with the container's mount namespace, just after the reply.
    deadline = time.monotonic() + 5
    while _loops_of(daemon) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _loops_of(daemon) == []
    assert leftovers(daemon)["mounts"] == []
    assert not (daemon.depot / handle).exists()


def test_copy_in_past_the_limit_is_limit_exceeded(client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(40 * MB)  # sparse on the host, 40 MB of zeros once copied
    handle = client.create({"disk_size_mb": 16})
    try:
        with pytest.raises(errors.LimitExceeded) as info:
            client.call("copy", handle, "in", str(big), "/tmp/big")
        assert handle in str(info.value) and "No space left on device" in str(info.value)
        assert client.run(handle, "rm -f /tmp/big; echo alive")[1] == "alive\n"
    finally:
        client.destroy(handle)


def test_limit_disk_can_only_be_set_at_create(client: Client, container: str) -> None:
    assert client.call("limit", container, "disk") is None
    assert client.info(container)["disk_stat"]["limit"] is None
    with pytest.raises(errors.InvalidRequest) as info:
        client.call("limit", container, "disk", 128)
    assert "only be set at create" in str(info.value)


@pytest.mark.parametrize("value", [0, 4, -1, "64", 1.5, True, None])
def test_bad_disk_size_is_rejected(client: Client, value: object) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        client.create({"disk_size_mb": value})
    assert "disk_size_mb" in str(info.value)


def test_quota_survives_a_daemon_restart_and_crash_leftovers_are_detached(
    fresh_daemon: Daemon,
) -> None:
    with fresh_daemon.client() as c:
        handle = c.create({"disk_size_mb": 32, "grace_time": None})
        c.run(handle, "echo kept > /tmp/kept")
    fresh_daemon.kill9()
    # a loop device of a depot entry no container owns, as a crash mid-create leaves it
    stray = fresh_daemon.depot / "stray0" / "disk.img"
    stray.parent.mkdir()
    with open(stray, "wb") as f:
        f.truncate(8 * MB)
    subprocess.run(["losetup", "-f", str(stray)], check=True)
    assert len(_loops_of(fresh_daemon)) == 2
    fresh_daemon.start()
    with fresh_daemon.client() as c:
        assert c.run(handle, "cat /tmp/kept; dd if=/dev/zero of=/tmp/f bs=1M count=40 2>&1")[
            1
        ].startswith("kept\n")
        assert c.info(handle)["disk_stat"]["limit"] == 32 * MB
        assert len(_loops_of(fresh_daemon)) == 1
        c.destroy(handle)
    deadline = time.monotonic() + 5  # released just after the reply
    while _loops_of(fresh_daemon) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _loops_of(fresh_daemon) == []
    assert leftovers(fresh_daemon)["mounts"] == []


def test_loop_devices_are_matched_by_their_file_not_its_path(tmp_path: Path) -> None:
    depot = tmp_path / "depot"
    image = depot / "h1" / quota.IMAGE_NAME
    image.parent.mkdir(parents=True)
    with open(image, "wb") as f:
        f.truncate(8 * MB)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    name = Path(device).name
    try:
        assert quota.loops_of(image) == [name]
        assert quota.images_of_depot(depot) == {name: "h1"}
        moved = tmp_path / "elsewhere.img"
        image.rename(moved)  # the kernel's path is stale now; the file is the same
        assert quota.loops_of(moved) == [name]
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert quota.loops_of(moved) == []


def test_tree_usage_counts_each_inode_once_and_an_empty_layer_is_seen_empty(
    tmp_path: Path,
) -> None:
    layer = tmp_path / "upper"
    layer.mkdir()
    assert quota.is_empty(layer) and quota.tree_usage(layer) == quota.EMPTY
    (layer / "a" / "b").mkdir(parents=True)
    (layer / "a" / "b" / "f").write_bytes(b"x" * 100_000)
    os.link(layer / "a" / "b" / "f", layer / "hard")
    os.symlink("/etc", layer / "link")  # not followed
    assert not quota.is_empty(layer)
    expected = sum(
        os.lstat(p).st_blocks * 512
        for p in (layer / "a", layer / "a" / "b", layer / "a" / "b" / "f", layer / "link")
    )
    # a, a/b, the file (twice linked), the symlink
    assert quota.tree_usage(layer) == (expected, 4) and expected >= 100_000
    missing = tmp_path / "missing"
    assert not quota.is_empty(missing) and quota.tree_usage(missing) == quota.EMPTY


@pytest.mark.parametrize("disk_size_mb", [None, 32], ids=["layer", "quota"])
def test_disk_stat_is_current_with_inodes(client: Client, disk_size_mb: int | None) -> None:
    handle = client.create({"disk_size_mb": disk_size_mb} if disk_size_mb else None)
    try:
        before = client.info(handle)["disk_stat"]
        assert (
            client.run(handle, "dd if=/dev/zero of=/tmp/one bs=1M count=1; touch /tmp/a /tmp/b")[0]
            == 0
        )
        after = client.info(handle)["disk_stat"]  # at once: no cache between a write and info
        assert after["bytes_used"] - before["bytes_used"] >= MB
        assert after["inodes_used"] - before["inodes_used"] >= 3
    finally:
        client.destroy(handle)


def test_setting_a_container_up_writes_nothing_to_its_layer(daemon: Daemon, client: Client) -> None:
    # The base rootfs has the files the set-up binds over (resolv.conf): an idle
    # container's writable layer stays empty, and its usage is one getdents away.
    handle = client.create()
    try:
        assert client.run(handle, "test -f /etc/resolv.conf")[0] == 0
        assert list((daemon.depot / handle / "upper").iterdir()) == []
        assert client.info(handle)["disk_stat"]["inodes_used"] == 0
    finally:
        client.destroy(handle)
