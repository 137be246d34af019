"""A store whose disk fills mid-import: a clear error, nothing half-made, the daemon serving."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import errors
from tests.conftest import Daemon
from tests.images.oci import ImageSpec, Layer, LayerBuilder, write_layout


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_mid_import(
    artifacts: tuple[Path, Path], small_disk: Path, busybox_tar: bytes, tmp_path: Path
) -> None:
    big = LayerBuilder().file("big", os.urandom(12 << 20)).file("big2", os.urandom(12 << 20))
    layout = write_layout(
        tmp_path / "oci", {"1": ImageSpec([Layer(busybox_tar), Layer(big.bytes())])}
    )
    d = Daemon(*artifacts, workdir=small_disk / "d").start()
    try:
        with d.client() as client:
            with pytest.raises(
                errors.NoCapacity, match="image .*oci: the image store's disk is full"
            ):
                client.call("image-import", str(layout), {"name": "corral.test/full"})
            assert client.call("image-list") == []
            assert list((d.depot / ".images" / "tmp").iterdir()) == []
            assert client.ping() == "pong"
    finally:
        d.close()
