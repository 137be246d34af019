"""A daemon killed mid-unpack leaves no half layer; a container of an image survives a restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import ConnectionClosed
from tests.conftest import Daemon, wait_until
from tests.images.oci import ImageSpec, Layer, LayerBuilder, write_big_layout, write_layout

#: Big enough that its unpack takes a while (it compresses to a few hundred KB).
BIG_FILE = 300 << 20


def test_kill9_mid_unpack_leaves_no_half_layer(
    fresh_daemon: Daemon, busybox_tar: bytes, tmp_path: Path
) -> None:
    layout, diff_id = write_big_layout(tmp_path / "big", busybox_tar, BIG_FILE)
    store = fresh_daemon.depot / ".images"
    layer_dir = store / "layers" / diff_id.split(":")[1]

    def call() -> None:
        with fresh_daemon.client() as client, pytest.raises((ConnectionClosed, OSError)):
            client.call_with_progress("image-import", str(layout), {"name": "corral.test/big:1"})

    importing = threading.Thread(target=call)
    importing.start()
    half = wait_until(
        lambda: [p for p in (store / "tmp").glob("layer.*/root/zeros") if p.stat().st_size > 0],
        timeout=60,
        what="the big layer being unpacked",
    )
    fresh_daemon.kill9()
    importing.join()
    assert half[0].stat().st_size < BIG_FILE  # killed mid-file
    assert not layer_dir.exists()
    fresh_daemon.start()
    assert not any((store / "tmp").iterdir())
    assert not layer_dir.exists()
    with fresh_daemon.client() as client:
        assert client.call("image-list") == []
        client.call_with_progress("image-import", str(layout), {"name": "corral.test/big:1"})
        assert (layer_dir / "zeros").stat().st_size == BIG_FILE
        handle = client.create({"image": "corral.test/big:1"})
        assert client.run(handle, "wc -c < /zeros")[1].strip() == str(BIG_FILE)
        client.destroy(handle)


def test_container_of_an_image_survives_a_restart(
    fresh_daemon: Daemon, busybox_tar: bytes, tmp_path: Path
) -> None:
    layer = LayerBuilder().file("marker", b"layer\n").bytes()
    layout = write_layout(
        tmp_path / "oci",
        {"1": ImageSpec([Layer(busybox_tar), Layer(layer)], {"Env": ["FROM_IMAGE=yes"]})},
    )
    with fresh_daemon.client() as client:
        client.call_with_progress("image-import", str(layout), {"name": "corral.test/restart"})
        handle = client.create({"image": "corral.test/restart:1"})
    fresh_daemon.kill9()
    fresh_daemon.start()
    with fresh_daemon.client() as client:
        assert client.run(handle, "cat /marker; echo $FROM_IMAGE")[1] == "layer\nyes\n"
        # Still in use after the restart: the image cannot go, nor its layers.
        with pytest.raises(errors.InvalidState, match="used by container"):
            client.call("image-remove", "corral.test/restart:1")
        client.destroy(handle)
        assert client.call("image-remove", "corral.test/restart:1")["deleted"]
