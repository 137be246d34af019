"""The multi-layer test image's upper layers and config (the busybox rootfs below them)."""

from __future__ import annotations

from tests.images.oci import LayerBuilder

#: The second layer of the multi-layer image: a whiteout, an opaque dir, a new file.
CHANGES = (
    LayerBuilder()
    .dir("etc")
    .file("etc/.wh.hostname", b"")
    .dir("opt")
    .file("opt/.wh..wh..opq", b"")
    .file("opt/kept", b"from layer 2\n")
    .dir("srv", mode=0o755)
    .bytes()
)
#: The first extra layer: files the second one hides.
HIDDEN = (
    LayerBuilder()
    .dir("etc")
    .file("etc/hostname", b"image\n")
    .dir("opt")
    .file("opt/old", b"hidden by the opaque dir\n")
    .dir("srv")
    .file("srv/file", b"srv\n")
    .bytes()
)
CONFIG = {
    "Env": ["PATH=/bin:/sbin", "GREETING=from-image", "LEVEL=image"],
    "WorkingDir": "/srv",
    "User": "nobody",
    "Cmd": ["sh", "-c", "echo hi"],
}
