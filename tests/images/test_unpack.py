"""The safe unpacker and the store against hostile and broken layers (no daemon)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from plugins.images.digest import DigestError
from plugins.images.store import Store
from plugins.images.unpack import OPAQUE_XATTR, LayerError, unpack
from tests.images.oci import LayerBuilder, sha256

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes device nodes and owners")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory a hostile layer would like to write into."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "passwd").write_text("host\n")
    return d


def _unpack(layer: bytes, root: Path) -> None:
    root.mkdir(exist_ok=True)
    unpack(io.BytesIO(layer), root)


def test_dotdot_entry_is_refused(tmp_path: Path, outside: Path) -> None:
    layer = LayerBuilder().file("a/../../outside/passwd", b"owned\n").bytes()
    with pytest.raises(LayerError, match="leaves the layer"):
        _unpack(layer, tmp_path / "layer")
    assert (outside / "passwd").read_text() == "host\n"


def test_absolute_names_stay_inside(tmp_path: Path, outside: Path) -> None:
    layer = LayerBuilder().file(str(outside / "passwd"), b"inside\n").bytes()
    _unpack(layer, tmp_path / "layer")
    assert (outside / "passwd").read_text() == "host\n"
    assert (tmp_path / "layer" / str(outside / "passwd").lstrip("/")).read_text() == "inside\n"


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_write_through_a_symlink_is_refused(tmp_path: Path, outside: Path, target: str) -> None:
    link = str(outside) if target == "absolute" else "../outside"
    layer = LayerBuilder().symlink("escape", link).file("escape/passwd", b"owned\n").bytes()
    with pytest.raises(LayerError, match="goes through 'escape'"):
        _unpack(layer, tmp_path / "layer")
    assert (outside / "passwd").read_text() == "host\n"


def test_a_symlink_replaced_by_a_file_is_not_followed(tmp_path: Path, outside: Path) -> None:
    layer = LayerBuilder().symlink("passwd", str(outside / "passwd")).file("passwd", b"x\n").bytes()
    _unpack(layer, tmp_path / "layer")
    assert (outside / "passwd").read_text() == "host\n"
    assert (tmp_path / "layer" / "passwd").read_text() == "x\n"


@pytest.mark.parametrize("target", ["../outside/passwd", "/etc/passwd", "missing"])
def test_hard_link_to_outside_is_refused(tmp_path: Path, outside: Path, target: str) -> None:
    layer = LayerBuilder().hardlink("stolen", target).bytes()
    with pytest.raises(LayerError):
        _unpack(layer, tmp_path / "layer")
    assert os.stat(outside / "passwd").st_nlink == 1


def test_hard_link_through_symlink_is_refused(tmp_path: Path, outside: Path) -> None:
    layer = LayerBuilder().symlink("up", str(outside)).hardlink("stolen", "up/passwd").bytes()
    with pytest.raises(LayerError):
        _unpack(layer, tmp_path / "layer")
    assert os.stat(outside / "passwd").st_nlink == 1


def test_hard_link_inside_is_kept(tmp_path: Path) -> None:
    layer = LayerBuilder().file("a", b"data").hardlink("b", "a").bytes()
    _unpack(layer, tmp_path / "layer")
    assert os.stat(tmp_path / "layer" / "a").st_ino == os.stat(tmp_path / "layer" / "b").st_ino


def test_whiteouts_become_overlay_form(tmp_path: Path) -> None:
    layer = (
        LayerBuilder()
        .dir("etc")
        .file("etc/.wh.motd", b"")
        .dir("opt")
        .file("opt/.wh..wh..opq", b"")
        .file("opt/new", b"n")
        .bytes()
    )
    root = tmp_path / "layer"
    _unpack(layer, root)
    st = os.lstat(root / "etc" / "motd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not (root / "etc" / ".wh.motd").exists()
    assert os.getxattr(root / "opt", OPAQUE_XATTR) == b"y"
    assert not (root / "opt" / ".wh..wh..opq").exists()


def test_owner_setuid_and_devices_kept_as_a_runtime_does(tmp_path: Path) -> None:
    layer = (
        LayerBuilder()
        .file("bin/su", b"#!", mode=0o4755, uid=0, gid=0)
        .file("home/u/f", b"u", uid=1000, gid=1000, mode=0o600)
        .add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        .add("dev/fifo", tarfile.FIFOTYPE, mode=0o600)
        .bytes()
    )
    root = tmp_path / "layer"
    _unpack(layer, root)
    assert stat.S_IMODE(os.stat(root / "bin/su").st_mode) == 0o4755
    st = os.stat(root / "home/u/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert os.lstat(root / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(root / "dev/fifo").st_mode)


def test_store_is_private_to_root(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open()
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700


def _store_with_blob(tmp_path: Path, blob: bytes) -> tuple[Store, str]:
    store = Store(tmp_path)
    store.open()
    return store, store.put_blob(io.BytesIO(blob), None, "test blob")


def _nothing_half_made(store: Store) -> None:
    assert list(store.layers.iterdir()) == []
    assert list(store.tmp.iterdir()) == []


def test_hostile_layer_leaves_no_layer(tmp_path: Path) -> None:
    tar = LayerBuilder().file("ok", b"x").file("../evil", b"y").bytes()
    store, blob = _store_with_blob(tmp_path, gzip.compress(tar))
    with pytest.raises(LayerError, match="layer 0: entry '../evil' leaves"):
        store.unpack_layer(blob, sha256(tar), "layer 0")
    _nothing_half_made(store)


def test_wrong_diff_id_leaves_no_layer(tmp_path: Path) -> None:
    tar = LayerBuilder().file("ok", b"x").bytes()
    store, blob = _store_with_blob(tmp_path, gzip.compress(tar))
    with pytest.raises(DigestError, match="does not match"):
        store.unpack_layer(blob, sha256(b"something else"), "layer 0")
    _nothing_half_made(store)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_truncated_layer_leaves_no_layer(tmp_path: Path, compression: str) -> None:
    tar = LayerBuilder().file("big", os.urandom(200_000)).bytes()
    blob = gzip.compress(tar) if compression == "gzip" else tar
    store, digest = _store_with_blob(tmp_path, blob[: len(blob) // 2])
    with pytest.raises((LayerError, DigestError)):
        store.unpack_layer(digest, sha256(tar), "layer 0")
    _nothing_half_made(store)


def test_blob_with_wrong_digest_is_not_stored(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open()
    with pytest.raises(DigestError, match="blob x: digest"):
        store.put_blob(io.BytesIO(b"data"), sha256(b"other"), "blob x")
    assert list(store.blobs.iterdir()) == [] and list(store.tmp.iterdir()) == []


def test_zstd_layer_is_unpacked(tmp_path: Path) -> None:
    import zstandard

    tar = LayerBuilder().file("z", b"zstd").bytes()
    store, blob = _store_with_blob(tmp_path, zstandard.ZstdCompressor().compress(tar))
    store.unpack_layer(blob, sha256(tar), "layer 0")
    assert (store.layer_path(sha256(tar)) / "z").read_bytes() == b"zstd"


def test_an_entry_the_kernel_refuses_is_the_layer_fault(tmp_path: Path) -> None:
    layer = LayerBuilder().file("x" * 300, b"").bytes()
    with pytest.raises(LayerError, match="File name too long"):
        _unpack(layer, tmp_path / "layer")
