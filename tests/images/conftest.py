"""Fixtures of the image tests: a daemon of their own and test images from the busybox rootfs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.client import Client
from tests.conftest import Daemon
from tests.images.oci import tar_of_tree


@pytest.fixture(scope="session")
def busybox_tar(artifacts: tuple[Path, Path]) -> bytes:
    """The base rootfs as one layer."""
    return tar_of_tree(artifacts[1])


@pytest.fixture(scope="module")
def image_daemon(artifacts: tuple[Path, Path]) -> Iterator[Daemon]:
    """A daemon whose image store starts empty."""
    d = Daemon(*artifacts).start()
    yield d
    d.close()


@pytest.fixture
def images_client(image_daemon: Daemon) -> Iterator[Client]:
    with image_daemon.client() as c:
        yield c
