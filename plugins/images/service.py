"""The image service: the store's index on the event loop, its blocking work in threads.

Names and the index change only here, on the event loop, so two imports or a
remove and a create never see half an update. Which images the containers use
is counted here too (from prepare to the container's end), so ``remove`` and
``prune`` never take a layer a container stacks.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from plugins.images import reference
from plugins.images.archive import ArchiveError, import_archive
from plugins.images.digest import DigestError
from plugins.images.manifest import ManifestError
from plugins.images.pull import pull
from plugins.images.registry import Access, RegistryError
from plugins.images.store import Image, Store, StoreError
from plugins.images.unpack import LayerError
from supervisor.api import InvalidRequest, InvalidState, NoCapacity

#: What a client's bad image gives: ``invalid_request`` naming the image and the reason.
REFUSED = (
    ArchiveError,
    DigestError,
    LayerError,
    ManifestError,
    RegistryError,
    StoreError,
    reference.ReferenceError,
)


def refused(what: str, exc: BaseException) -> Exception:
    """The protocol error for *exc* met while handling image *what*."""
    if isinstance(exc, REFUSED):
        return InvalidRequest(f"image {what}: {exc}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoCapacity(f"image {what}: the image store's disk is full")
    raise exc


def normalize_name(name: str) -> str:
    """*name* as the store keeps it (``busybox`` → ``docker.io/library/busybox:latest``)."""
    return str(reference.parse(name))


class ImageService:
    """The images of one daemon's depot."""

    def __init__(self, depot: Path, access: Access) -> None:
        self.store = Store(depot)
        self.access = access
        #: The pulls under way, by normalized reference: a second pull of one waits for it.
        self._pulls: dict[str, trio.Event] = {}
        #: The image id and layer diff IDs each container (by handle) stacks: kept from
        #: its prepare to its end, also when its image is removed meanwhile.
        self.users: dict[str, tuple[str, list[str]]] = {}
        #: One writer at a time: blobs and layers are shared between images.
        self._writing = trio.Lock()

    def open(self) -> None:
        self.store.open()

    # -- lookups -------------------------------------------------------------------------

    def find(self, ref: str) -> Image | None:
        """The image *ref* names: an id (``sha256:...``, or 12+ of its hex digits) or a name."""
        images = self.store.images
        if ref in images:
            return images[ref]
        bare = ref.removeprefix("sha256:")
        if len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare):
            matches = [i for i in images.values() if i.id.removeprefix("sha256:").startswith(bare)]
            if len(matches) == 1:
                return matches[0]
        try:
            name = normalize_name(ref)
        except reference.ReferenceError:
            return None
        for image in images.values():
            if name in image.names or ("@" in name and image.manifest == name.split("@", 1)[1]):
                return image
        return None

    def get(self, ref: str) -> Image:
        image = self.find(ref)
        if image is None:
            raise InvalidRequest(f"image {ref}: not in the store (pull or import it first)")
        return image

    def containers_of(self, image: Image) -> list[str]:
        return sorted(h for h, (image_id, _) in self.users.items() if image_id == image.id)

    def use(self, image: Image, handle: str) -> None:
        self.users[handle] = (image.id, image.diff_ids)

    def release(self, handle: str) -> None:
        self.users.pop(handle, None)

    def layer_dirs(self, image: Image) -> list[Path]:
        """The image's layer directories, bottom first.

        Raises:
            InvalidRequest: a layer is missing (the store was tampered with).
        """
        dirs = [self.store.layer_path(d) for d in image.diff_ids]
        for diff_id, path in zip(image.diff_ids, dirs, strict=True):
            if not path.is_dir():
                raise InvalidRequest(f"image {image.id}: layer {diff_id} is missing from the store")
        return dirs

    # -- changes -------------------------------------------------------------------------

    def add(self, image: Image) -> Image:
        """Put *image* in the index; its names leave any image that had them."""
        names = [normalize_name(n) for n in image.names if n]
        for other in self.store.images.values():
            other.names = [n for n in other.names if n not in names]
        known = self.store.images.get(image.id)
        if known is not None:
            known.names = sorted(set(known.names) | set(names))
            known.manifest = known.manifest or image.manifest
            image = known
        else:
            image.names = names
            self.store.images[image.id] = image
        self.store.save_index()
        return image

    async def import_(
        self, path: Path, name: str | None, progress: Callable[[str], None]
    ) -> list[Image]:
        """Import the archive or OCI layout at *path* (see :mod:`plugins.images.archive`)."""
        if name is not None:
            try:
                normalize_name(name)
            except reference.ReferenceError as exc:
                raise InvalidRequest(f"image import: name {exc}") from None
        async with self._writing:
            try:
                images = await trio.to_thread.run_sync(
                    import_archive, self.store, path, name, progress
                )
            except Exception as exc:
                raise refused(str(path), exc) from None
            try:  # every name checked before any image is added
                for image in images:
                    image.names = [normalize_name(n) for n in image.names if n]
            except reference.ReferenceError as exc:
                raise InvalidRequest(f"image {path}: a name in the archive: {exc}") from None
            return [self.add(image) for image in images]

    async def pull(self, ref: str, progress: Callable[[str], None]) -> Image:
        """Pull *ref* from its registry (see :mod:`plugins.images.pull`), or join the pull of
        it under way."""
        try:
            parsed = reference.parse(ref)
        except reference.ReferenceError as exc:
            raise InvalidRequest(f"image {ref}: {exc}") from None
        key = str(parsed)
        running = self._pulls.get(key)
        if running is not None:
            progress(f"joining the pull of {key} under way")
            await running.wait()
            image = self.find(key)
            if image is None:
                raise InvalidRequest(
                    f"image {key}: the pull under way, which this one joined, failed"
                )
            return image
        done = self._pulls[key] = trio.Event()
        try:
            async with self._writing:
                try:
                    image = await trio.to_thread.run_sync(
                        pull, self.store, parsed, self.access, progress
                    )
                except Exception as exc:
                    raise refused(key, exc) from None
                return self.add(image)
        finally:
            del self._pulls[key]
            done.set()

    async def remove(self, ref: str, force: bool = False) -> dict[str, Any]:
        """Forget *ref*: a name alone when the image has others, else the image. Forced,
        also an image containers use: they keep its layers (see :attr:`users`) until they
        are destroyed, and ``image-prune`` deletes them after that.

        Raises:
            InvalidState: containers use the image (named in the message), not forced.
        """
        image = self.get(ref)
        try:
            name = normalize_name(ref)
        except reference.ReferenceError:
            name = None
        if name in image.names and len(image.names) > 1:
            image.names.remove(name)
            self.store.save_index()
            return {"untagged": [name], "deleted": None}
        users = self.containers_of(image)
        if users and not force:
            raise InvalidState(
                f"image {ref}: used by container(s) {', '.join(users)}; destroy them first, "
                'or force it ({"force": true}): they keep its layers until they are destroyed'
            )
        del self.store.images[image.id]
        self.store.save_index()
        return {"untagged": image.names, "deleted": image.id}

    async def prune(self) -> dict[str, Any]:
        """Delete the layers and blobs no image and no container uses."""
        async with self._writing:
            kept_layers: set[str] = set()
            kept_blobs: set[str] = set()
            for image in self.store.images.values():
                kept_layers.update(image.diff_ids)
                kept_blobs.add(image.id)
                kept_blobs.update(layer["blob"] for layer in image.layers)
                if image.manifest:
                    kept_blobs.add(image.manifest)
            # A removed image's layers stay while a container still stacks them.
            for _, diff_ids in self.users.values():
                kept_layers.update(diff_ids)
            layers = [d for d in self.store.all_layers() if d not in kept_layers]
            blobs = [d for d in self.store.all_blobs() if d not in kept_blobs]

            def delete() -> int:
                freed = self.store.usage([self.store.layer_path(d) for d in layers])
                freed += sum(self.store.blob_path(d).stat().st_size for d in blobs)
                for d in layers:
                    self.store.remove_layer(d)
                for d in blobs:
                    self.store.remove_blob(d)
                return freed

            freed = await trio.to_thread.run_sync(delete)
        return {"layers": len(layers), "blobs": len(blobs), "bytes": freed}
