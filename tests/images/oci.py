"""Test images written by hand: layer tarballs, OCI image layouts and ``docker save`` archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from plugins.images.manifest import this_platform


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LayerBuilder:
    """A layer tarball built entry by entry."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)

    def add(
        self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: Any
    ) -> LayerBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
        for key, value in attrs.items():
            setattr(info, key, value)
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            self.tar.addfile(info, io.BytesIO(data))
        else:
            self.tar.addfile(info)
        return self

    def file(self, name: str, data: bytes, **attrs: Any) -> LayerBuilder:
        return self.add(name, tarfile.REGTYPE, data, **attrs)

    def dir(self, name: str, **attrs: Any) -> LayerBuilder:
        return self.add(name, tarfile.DIRTYPE, **attrs)

    def symlink(self, name: str, target: str) -> LayerBuilder:
        return self.add(name, tarfile.SYMTYPE, linkname=target)

    def hardlink(self, name: str, target: str) -> LayerBuilder:
        return self.add(name, tarfile.LNKTYPE, linkname=target)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def tar_of_tree(root: Path) -> bytes:
    """A layer holding the whole directory *root* (e.g. the busybox rootfs)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)
    return buffer.getvalue()


@dataclass
class Layer:
    """A layer as stored: its tar, and the blob (compressed or not) carrying it."""

    tar: bytes
    compression: str = "gzip"

    @property
    def blob(self) -> bytes:
        if self.compression == "gzip":
            return gzip.compress(self.tar, compresslevel=1, mtime=0)
        if self.compression == "zstd":
            return zstandard.ZstdCompressor().compress(self.tar)
        return self.tar

    @property
    def media_type(self) -> str:
        suffix = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[self.compression]
        return "application/vnd.oci.image.layer.v1.tar" + suffix


@dataclass
class ImageSpec:
    """An image to write: layers bottom first and the config's ``config`` object."""

    layers: list[Layer]
    config: dict[str, Any] = field(default_factory=dict)
    architecture: str = field(default_factory=lambda: this_platform()[1])

    def config_bytes(self, diff_ids: list[str] | None = None) -> bytes:
        return json.dumps(
            {
                "architecture": self.architecture,
                "os": "linux",
                "created": "2026-01-01T00:00:00Z",
                "config": self.config,
                "rootfs": {
                    "type": "layers",
                    "diff_ids": diff_ids
                    if diff_ids is not None
                    else [sha256(layer.tar) for layer in self.layers],
                },
            }
        ).encode()


def _put(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = sha256(data)
    (blobs / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_manifest(
    blobs: Path, image: ImageSpec, diff_ids: list[str] | None = None
) -> dict[str, Any]:
    """Write the image's blobs and manifest into *blobs*; the manifest's descriptor."""
    config = _put(blobs, image.config_bytes(diff_ids))
    layers = []
    for layer in image.layers:
        layers.append({"mediaType": layer.media_type, **_put(blobs, layer.blob)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": layers,
    }
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_put(blobs, json.dumps(manifest).encode()),
    }


def write_layout(root: Path, images: dict[str, ImageSpec], index: bool = False) -> Path:
    """An OCI image layout at *root* with *images* by tag; *index*: all behind one image index
    (a multi-arch image: each image's platform is its architecture)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for tag, image in images.items():
        descriptor = write_manifest(blobs, image)
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
        descriptor["platform"] = {"os": "linux", "architecture": image.architecture}
        entries.append(descriptor)
    if index:
        nested = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }
        top = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            **_put(blobs, json.dumps(nested).encode()),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
        entries = [top]
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return root


def write_docker_save(path: Path, name: str, image: ImageSpec) -> Path:
    """A ``docker save`` archive (the classic form: ``ID/layer.tar`` entries, uncompressed)."""
    config = image.config_bytes()
    config_name = sha256(config).split(":")[1] + ".json"
    members: dict[str, bytes] = {config_name: config}
    layer_names = []
    for i, layer in enumerate(image.layers):
        layer_names.append(f"layer{i}/layer.tar")
        members[layer_names[-1]] = layer.tar
    manifest = [{"Config": config_name, "RepoTags": [name], "Layers": layer_names}]
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        for member_name, data in members.items():
            info = tarfile.TarInfo(member_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


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


def write_big_layout(root: Path, busybox_tar: bytes, size: int) -> tuple[Path, str]:
    """A layout (tag ``t``) whose second layer holds one file ``/zeros`` of *size* zero bytes,
    written without holding it in memory; that layer's diff ID."""
    layout = write_layout(root, {"t": ImageSpec([Layer(busybox_tar)])})
    blobs = layout / "blobs" / "sha256"
    big = root / "big.tar.gz"
    with gzip.open(big, "wb", compresslevel=1) as raw:
        hashing = _Hashing(raw)  # type: ignore[arg-type]
        with tarfile.open(fileobj=hashing, mode="w|") as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("zeros")
            info.size = size
            tar.addfile(info, _Zeros(size))
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
