"""The content-addressed image store under the depot (``DEPOT/.images``).

::

    blobs/sha256/HEX     manifests, configs and layer blobs, each once, by digest
    layers/HEX/          a layer unpacked (HEX of its diff ID: the uncompressed digest),
                         an overlay lower directory shared by every image that has it
    tmp/                 blobs and layers being written: moved into place by one
                         rename once complete and verified, so a failure or a kill -9
                         leaves only this, which every start empties
    images.json          the images: names, config, layers (replaced by rename)

A layer directory exists only once fully unpacked and its diff ID checked:
a later create can never use half a layer. The directory is 0700: setuid
files and device nodes in layers are out of reach of host users.

Blocking methods run in worker threads; the index (``images``) is read and
changed only on the event loop, by :mod:`plugins.images.service`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from plugins.images import digest as digests
from plugins.images.unpack import LayerError, unpack

STORE_NAME = ".images"
INDEX = "images.json"
COPY_CHUNK = 1 << 20


class StoreError(Exception):
    """A blob or layer could not be stored; the message says which and why."""


@dataclass
class Image:
    """One image in the store (its id is its config's digest)."""

    id: str
    names: list[str]
    #: Layer blobs, bottom first, with their diff IDs and compressed sizes.
    layers: list[dict[str, Any]]
    #: The image config's ``config`` object (Env, Cmd, Entrypoint, User, WorkingDir...).
    config: dict[str, Any]
    os: str
    architecture: str
    created: str | None
    manifest: str | None = None
    size: int = 0

    @property
    def diff_ids(self) -> list[str]:
        return [layer["diff_id"] for layer in self.layers]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        """The image of :meth:`to_json`'s output (keys of another version ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


class Store:
    """Files of the store; see the module docstring."""

    def __init__(self, depot: Path) -> None:
        self.root = depot / STORE_NAME
        self.blobs = self.root / "blobs" / "sha256"
        self.layers = self.root / "layers"
        self.tmp = self.root / "tmp"
        self.images: dict[str, Image] = {}

    def open(self) -> None:
        """Make the directories, drop what an interrupted write left, read the index."""
        for path in (self.root, self.blobs, self.layers):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(mode=0o700)
        index = self.root / INDEX
        if index.exists():
            raw = json.loads(index.read_text())
            self.images = {item["id"]: Image.from_json(item) for item in raw["images"]}

    def save_index(self) -> None:
        data = json.dumps({"images": [i.to_json() for i in self.images.values()]}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="index.")
        with os.fdopen(fd, "w") as out:
            out.write(data)
        os.replace(tmp, self.root / INDEX)

    # -- blobs --------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def put_blob(
        self,
        source: IO[bytes],
        expected: str | None,
        what: str,
        limit: int | None = None,
        report: Callable[[int], None] | None = None,
    ) -> str:
        """Copy *source* into the store, checking its digest while it streams; its digest.

        Raises:
            DigestError: the bytes do not match *expected* (nothing is stored).
            StoreError: more than *limit* bytes.
        """
        reader = digests.HashingReader(source)
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="blob.")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(COPY_CHUNK):
                    if limit is not None and reader.size > limit:
                        raise StoreError(f"{what}: larger than {limit} bytes")
                    out.write(chunk)
                    if report is not None:
                        report(reader.size)
            if expected is not None and reader.digest != expected:
                raise digests.DigestError(
                    f"{what}: digest {reader.digest} does not match {expected}"
                )
            os.replace(tmp, self.blob_path(reader.digest))
        except BaseException:
            os.unlink(tmp)
            raise
        return reader.digest

    def read_blob(self, digest: str, limit: int) -> bytes:
        """A small blob's bytes (a manifest or config), at most *limit* of them."""
        with open(self.blob_path(digest), "rb") as blob:
            data = blob.read(limit + 1)
        if len(data) > limit:
            raise StoreError(f"blob {digest}: larger than {limit} bytes")
        return data

    # -- layers -------------------------------------------------------------------------

    def layer_path(self, diff_id: str) -> Path:
        return self.layers / _hex(diff_id)

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_path(diff_id).is_dir()

    def unpack_layer(self, blob: str, diff_id: str, what: str) -> None:
        """Unpack layer blob *blob* into its directory, checking its uncompressed digest.

        Raises:
            LayerError: a hostile or broken layer.
            DigestError: the uncompressed bytes are not *diff_id*.
        """
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix="layer."))
        try:
            target = work / "root"
            target.mkdir(mode=0o755)
            with open(self.blob_path(blob), "rb") as raw:
                try:
                    uncompressed = digests.HashingReader(digests.decompressed(raw))
                    unpack(uncompressed, target)  # type: ignore[arg-type]
                    uncompressed.verify(diff_id, f"{what} (uncompressed)")
                except LayerError as exc:
                    raise LayerError(f"{what}: {exc}") from None
                except (OSError, EOFError) as exc:
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise  # the host's trouble (a full disk), not the layer's
                    raise LayerError(f"{what}: cannot decompress: {exc}") from None
                except Exception as exc:  # zstandard's errors
                    if type(exc).__module__.startswith("zstandard"):
                        raise LayerError(f"{what}: cannot decompress: {exc}") from None
                    raise
            try:
                os.rename(target, self.layer_path(diff_id))
            except OSError:
                if not self.has_layer(diff_id):  # another unpack of it won: fine
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- clean-up -----------------------------------------------------------------------

    def remove_layer(self, diff_id: str) -> None:
        """Move the layer out of reach at once (one rename), then delete it."""
        path = self.layer_path(diff_id)
        if not path.exists():
            return
        doomed = Path(tempfile.mkdtemp(dir=self.tmp, prefix="gone."))
        os.rename(path, doomed / "root")
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    def all_layers(self) -> list[str]:
        return ["sha256:" + p.name for p in self.layers.iterdir()]

    def all_blobs(self) -> list[str]:
        return ["sha256:" + p.name for p in self.blobs.iterdir()]

    def usage(self, paths: list[Path]) -> int:
        """Bytes of the files under *paths* (each inode once)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for base in paths:
            for dirpath, _, files in os.walk(base):
                for name in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
        return total
