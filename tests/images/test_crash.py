"""A daemon killed mid-unpack leaves no half layer; a container of an image survives a restart."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import threading
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import ConnectionClosed
from tests.conftest import Daemon, wait_until
from tests.images.oci import ImageSpec, Layer, LayerBuilder, sha256, write_layout

#: Big enough that its unpack takes a while (it compresses to a few hundred KB).
BIG_FILE = 300 << 20


class _Zeros:
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


class _Hashing:
    """A file that hashes what is written to it (the layer's diff ID, written once)."""

    def __init__(self, raw: gzip.GzipFile) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.raw.write(data)


def _big_layout(root: Path, busybox_tar: bytes) -> tuple[Path, str]:
    """A layout whose second layer holds one big file of zeros; that layer's diff ID."""
    layout = write_layout(root, {"t": ImageSpec([Layer(busybox_tar)])})
    blobs = layout / "blobs" / "sha256"
    big = root / "big.tar.gz"
    with gzip.open(big, "wb", compresslevel=1) as raw:
        hashing = _Hashing(raw)  # type: ignore[arg-type]
        with tarfile.open(fileobj=hashing, mode="w|") as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("zeros")
            info.size = BIG_FILE
            tar.addfile(info, _Zeros(BIG_FILE))
    diff_id = "sha256:" + hashing.hash.hexdigest()
    data = big.read_bytes()
    blob = sha256(data)
    (blobs / blob.split(":")[1]).write_bytes(data)
    # Rewrite the manifest and config with the big layer on top.
    index = json.loads((layout / "index.json").read_text())
    manifest_path = blobs / index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(manifest_path.read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["rootfs"]["diff_ids"].append(diff_id)
    config_bytes = json.dumps(config).encode()
    (blobs / sha256(config_bytes).split(":")[1]).write_bytes(config_bytes)
    manifest["config"].update(digest=sha256(config_bytes), size=len(config_bytes))
    manifest["layers"].append(
        {"mediaType": Layer(b"").media_type, "digest": blob, "size": len(data)}
    )
    manifest_bytes = json.dumps(manifest).encode()
    (blobs / sha256(manifest_bytes).split(":")[1]).write_bytes(manifest_bytes)
    index["manifests"][0].update(digest=sha256(manifest_bytes), size=len(manifest_bytes))
    (layout / "index.json").write_text(json.dumps(index))
    return layout, diff_id


def test_kill9_mid_unpack_leaves_no_half_layer(
    fresh_daemon: Daemon, busybox_tar: bytes, tmp_path: Path
) -> None:
    layout, diff_id = _big_layout(tmp_path / "big", busybox_tar)
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
