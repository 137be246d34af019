"""``create`` CONFIG ``"rootfs_mode": "direct"``: the rootfs directory itself, writable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from supervisor.client import Client
from supervisor.errors import InvalidRequest
from tests.conftest import NOTHING_LEFT, Daemon, leftovers


@pytest.fixture
def root(artifacts: tuple[Path, Path], tmp_path: Path) -> Path:
    shutil.copytree(artifacts[1], tmp_path / "root", symlinks=True)
    return tmp_path / "root"


def test_writes_land_in_the_directory_and_stay(daemon: Daemon, client: Client, root: Path) -> None:
    (root / "from-host").write_text("host\n")
    handle = client.create({"rootfs": str(root), "rootfs_mode": "direct"})
    try:
        status, out, _ = client.run(
            handle, "cat /from-host; echo inside > /root/made; rm /from-host", privileged=True
        )
        assert (status, out) == (0, "host\n")
        assert (root / "root" / "made").read_text() == "inside\n"
        assert not (root / "from-host").exists()
    finally:
        client.destroy(handle)
    assert (root / "root" / "made").exists()  # the directory is the client's: it stays
    assert leftovers(daemon) == NOTHING_LEFT


def test_a_symlink_to_the_directory_is_followed_once_and_checked(
    daemon: Daemon, client: Client, root: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(root)
    handle = client.create({"rootfs": str(link), "rootfs_mode": "direct"})
    try:
        assert client.run(handle, "echo x > /via-link", privileged=True)[0] == 0
    finally:
        client.destroy(handle)
    assert (root / "via-link").exists()
    os.symlink("/usr", tmp_path / "to-usr")
    with pytest.raises(InvalidRequest, match=r"\(that is /usr\).*system directory /usr"):
        client.create({"rootfs": str(tmp_path / "to-usr"), "rootfs_mode": "direct"})


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"rootfs": "/"}, "would let the container write the host's root"),
        ({"rootfs": "/usr"}, "system directory /usr"),
        ({}, "needs a rootfs of the client's"),
        ({"disk_size_mb": 64, "rootfs": "ROOT"}, "cannot go with disk_size_mb"),
        ({"rootfs": "DEPOT"}, "the daemon's own directory"),
        ({"rootfs": "BASE"}, "the daemon's own directory|system directory"),
    ],
)
def test_refused_roots_name_why(
    daemon: Daemon, client: Client, root: Path, config: dict[str, object], words: str
) -> None:
    places = {
        "ROOT": str(root),
        "DEPOT": str(daemon.depot),
        "BASE": str(daemon.tables["containers"]["rootfs"]),
    }
    config = {k: places.get(v, v) if isinstance(v, str) else v for k, v in config.items()}
    if config.get("rootfs") == str(daemon.depot):
        (daemon.depot / "bin").mkdir(exist_ok=True)  # looks like a rootfs: refused all the same
    try:
        with pytest.raises(InvalidRequest, match=words):
            client.create({**config, "rootfs_mode": "direct"})
    finally:
        if (daemon.depot / "bin").is_dir():
            (daemon.depot / "bin").rmdir()
    assert client.list() == []


def test_an_unknown_mode_is_refused(client: Client, root: Path) -> None:
    with pytest.raises(InvalidRequest, match="rootfs_mode: 'chroot' is not one of"):
        client.create({"rootfs": str(root), "rootfs_mode": "chroot"})
