"""Import of an OCI image layout (a directory or a tar of one) and of a ``docker save`` archive.

Everything in the archive is hostile: paths in it are taken only as names of
its own entries (never followed out of the directory), every blob is checked
against its digest as it is copied into the store, every layer against its
diff ID as it is unpacked. Blocking: run in a worker thread.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from plugins.images import manifest as mf
from plugins.images.store import Image, Store, StoreError
from plugins.images.unpack import LayerError, clean_name

#: Import stops at an image with more entries in a manifest.json than this.
MAX_ENTRIES = 64


class ArchiveError(Exception):
    """The archive is not an image archive, or a broken one."""


class _Source:
    """Files of the archive by their names inside it."""

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def read(self, name: str, limit: int = mf.MAX_JSON) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"{name}: larger than {limit} bytes")
        return data


class _Directory(_Source):
    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def _open_fd(self, name: str) -> int:
        parts = clean_name(name)
        if not parts:
            raise ArchiveError(f"{name!r}: not a file")
        fd = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
            return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            raise ArchiveError(f"{name}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def open(self, name: str) -> IO[bytes]:
        return os.fdopen(self._open_fd(name), "rb")

    def exists(self, name: str) -> bool:
        try:
            os.close(self._open_fd(name))
        except (ArchiveError, LayerError):
            return False
        return True

    def close(self) -> None:
        os.close(self.root_fd)


class _Tar(_Source):
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveError(f"not a tar archive: {exc}") from None
        self.members = {}
        for member in members:
            if member.isreg():
                try:
                    self.members["/".join(clean_name(member.name))] = member
                except LayerError:
                    continue

    def _member(self, name: str) -> tarfile.TarInfo:
        try:
            return self.members["/".join(clean_name(name))]
        except (KeyError, LayerError):
            raise ArchiveError(f"{name}: not a file in the archive") from None

    def open(self, name: str) -> IO[bytes]:
        data = self.tar.extractfile(self._member(name))
        assert data is not None
        return data

    def exists(self, name: str) -> bool:
        try:
            self._member(name)
        except ArchiveError:
            return False
        return True

    def close(self) -> None:
        self.tar.close()


@contextmanager
def _opened(path: Path) -> Iterator[_Source]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # missing, a name too long, a loop of symlinks: the client's path
        raise ArchiveError(f"{path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        source: _Source = _Directory(path)
    elif stat.S_ISREG(mode):
        source = _Tar(path)
    else:
        raise ArchiveError(f"{path}: neither a file nor a directory")
    try:
        yield source
    finally:
        source.close()


@dataclass
class _Layer:
    name: str
    expected: str | None  # the blob's digest when the archive names it


def _blob_name(digest: str) -> str:
    algorithm, hexa = digest.split(":", 1)
    return f"blobs/{algorithm}/{hexa}"


def _store_image(
    store: Store,
    source: _Source,
    config_name: str,
    config_digest: str | None,
    layers: list[_Layer],
    names: list[str],
    manifest: str | None,
    progress: Callable[[str], None],
) -> Image:
    with source.open(config_name) as f:
        image_id = store.put_blob(f, config_digest, f"config {config_name}", mf.MAX_JSON)
    config = mf.image_config(store.read_blob(image_id, mf.MAX_JSON), f"config {image_id}")
    if len(config.diff_ids) != len(layers):
        raise mf.ManifestError(
            f"config {image_id}: {len(config.diff_ids)} diff IDs for {len(layers)} layers"
        )
    records: list[dict[str, Any]] = []
    for i, (layer, diff_id) in enumerate(zip(layers, config.diff_ids, strict=True)):
        what = f"layer {i} ({layer.name})"
        with source.open(layer.name) as f:
            blob = store.put_blob(f, layer.expected, what)
        if not store.has_layer(diff_id):
            store.unpack_layer(blob, diff_id, what)
        size = store.blob_path(blob).stat().st_size
        records.append({"blob": blob, "diff_id": diff_id, "size": size})
        progress(f"layer {i + 1}/{len(layers)} {diff_id[:19]}")
    return Image(
        id=image_id,
        names=names,
        layers=records,
        config=config.config,
        os=config.os,
        architecture=config.architecture,
        created=config.created,
        manifest=manifest,
        size=sum(r["size"] for r in records),
    )


def _docker_save(store: Store, source: _Source, progress: Callable[[str], None]) -> list[Image]:
    entries = mf.load_json(b'{"m": ' + source.read("manifest.json") + b"}", "manifest.json")["m"]
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise ArchiveError(f"manifest.json: not a list of 1 to {MAX_ENTRIES} images")
    images = []
    for i, entry in enumerate(entries):
        what = f"manifest.json[{i}]"
        if not isinstance(entry, dict):
            raise ArchiveError(f"{what}: not an object")
        config, tags, layers = entry.get("Config"), entry.get("RepoTags") or [], entry.get("Layers")
        if not isinstance(config, str) or not isinstance(layers, list):
            raise ArchiveError(f"{what}: no Config or Layers")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ArchiveError(f"{what}: RepoTags is not a list of names")
        if not all(isinstance(name, str) for name in layers):
            raise ArchiveError(f"{what}: Layers is not a list of paths")
        images.append(
            _store_image(
                store,
                source,
                config,
                _named_digest(config),
                [_Layer(name, _named_digest(name)) for name in layers],
                list(tags),
                None,
                progress,
            )
        )
    return images


def _named_digest(name: str) -> str | None:
    """The digest a ``blobs/sha256/HEX`` path names (checked when the blob is copied)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
        return f"sha256:{parts[2]}"
    return None


def _oci_layout(
    store: Store, source: _Source, name: str | None, progress: Callable[[str], None]
) -> list[Image]:
    index = mf.load_json(source.read("index.json"), "index.json")
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise ArchiveError(f"index.json: not a list of 1 to {MAX_ENTRIES} manifests")
    images = []
    for i, entry in enumerate(entries):
        top = mf.descriptor(entry, f"index.json: manifests[{i}]")
        target = top
        doc = _read_verified(store, source, target)
        if mf.media_type(doc, target.media_type) in mf.INDEX_TYPES:
            target = mf.choose_platform(doc, f"index {target.digest}")
            doc = _read_verified(store, source, target)
        config, layers = mf.layers_of(doc, f"manifest {target.digest}")
        ref_name = top.annotations.get("org.opencontainers.image.ref.name")
        names = [_layout_name(name, ref_name)] if (name or ref_name) else []
        images.append(
            _store_image(
                store,
                source,
                _blob_name(config.digest),
                config.digest,
                [_Layer(_blob_name(layer.digest), layer.digest) for layer in layers],
                names,
                target.digest,
                progress,
            )
        )
    return images


def _layout_name(name: str | None, ref_name: str | None) -> str:
    """The name an image of a layout gets: *name* (given at import) with the layout's tag."""
    if name is None:
        return ref_name or ""
    if (
        ref_name
        and ":" not in name.rsplit("/", 1)[-1]
        and "/" not in ref_name
        and ":" not in ref_name
    ):
        return f"{name}:{ref_name}"
    return name


def _read_verified(store: Store, source: _Source, target: mf.Descriptor) -> dict[str, object]:
    with source.open(_blob_name(target.digest)) as f:
        digest = store.put_blob(f, target.digest, f"manifest {target.digest}", mf.MAX_JSON)
    return mf.load_json(store.read_blob(digest, mf.MAX_JSON), f"manifest {digest}")


def import_archive(
    store: Store, path: Path, name: str | None, progress: Callable[[str], None]
) -> list[Image]:
    """The images of the archive or layout at *path*, their blobs and layers now in *store*.

    Raises:
        ArchiveError, ManifestError, DigestError, LayerError, StoreError: the archive is refused.
    """
    with _opened(path) as source:
        if source.exists("manifest.json"):
            images = _docker_save(store, source, progress)
            if name is not None:
                for image in images:
                    image.names = [name]
        elif source.exists("oci-layout") and source.exists("index.json"):
            images = _oci_layout(store, source, name, progress)
        else:
            raise ArchiveError(
                "neither a docker save archive (manifest.json) nor an OCI layout "
                "(oci-layout, index.json)"
            )
    return images


__all__ = ["ArchiveError", "StoreError", "import_archive"]
