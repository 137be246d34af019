"""Pulling an image from a registry into the store. Blocking: run in a worker thread.

The manifest is checked against the digest it was asked by (or the digest it
gets in the store, for a tag), an index resolved to this machine's platform,
every blob hashed while it streams into ``tmp/`` and kept only if it matches,
every layer unpacked and checked against the config's diff ID. Layers already
unpacked are neither downloaded nor unpacked again.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from plugins.images import manifest as mf
from plugins.images.digest import DigestError, HashingReader
from plugins.images.reference import Reference
from plugins.images.registry import Access, RegistryClient
from plugins.images.store import Image, Store

#: Seconds between two progress lines about one layer's bytes.
PROGRESS_EVERY = 0.5


def _verified_manifest(client: RegistryClient, store: Store, reference: str) -> tuple[dict, str]:
    body, kind = client.manifest(reference)
    digest = HashingReader(io.BytesIO(body))
    digest.drain()
    if reference.startswith("sha256:") and digest.digest != reference:
        raise DigestError(f"manifest {reference}: the registry sent one of digest {digest.digest}")
    store.put_blob(io.BytesIO(body), digest.digest, f"manifest {reference}", mf.MAX_JSON)
    doc = mf.load_json(body, f"manifest {reference}")
    doc.setdefault("mediaType", kind)
    return doc, digest.digest


def pull(store: Store, ref: Reference, access: Access, progress: Callable[[str], None]) -> Image:
    """Pull *ref* into *store*; the image (not yet in the index).

    Raises:
        RegistryError, DigestError, ManifestError, LayerError, StoreError: refused.
    """
    client = RegistryClient(ref, access)
    try:
        doc, digest = _verified_manifest(client, store, ref.digest or str(ref.tag))
        if mf.media_type(doc, "") in mf.INDEX_TYPES:
            chosen = mf.choose_platform(doc, f"index {digest}")
            doc, digest = _verified_manifest(client, store, chosen.digest)
        config, layers = mf.layers_of(doc, f"manifest {digest}")
        if not store.has_blob(config.digest):
            with client.blob(config.digest, mf.MAX_JSON, "config") as body:
                store.put_blob(body, config.digest, f"config {config.digest}", mf.MAX_JSON)
        image_config = mf.image_config(
            store.read_blob(config.digest, mf.MAX_JSON), f"config {config.digest}"
        )
        if len(image_config.diff_ids) != len(layers):
            raise mf.ManifestError(
                f"config {config.digest}: {len(image_config.diff_ids)} diff IDs "
                f"for {len(layers)} layers"
            )
        total = sum(layer.size or 0 for layer in layers)
        done = 0
        records = []
        for i, (layer, diff_id) in enumerate(zip(layers, image_config.diff_ids, strict=True)):
            what = f"layer {i + 1}/{len(layers)} {layer.digest[:19]}"
            if not store.has_layer(diff_id):
                if not store.has_blob(layer.digest):
                    _download(client, store, layer, what, done, total, progress)
                store.unpack_layer(layer.digest, diff_id, what)
            done += layer.size or 0
            progress(f"{what} done ({done}/{total} bytes)")
            records.append({"blob": layer.digest, "diff_id": diff_id, "size": layer.size or 0})
    finally:
        client.close()
    return Image(
        id=config.digest,
        names=[str(ref)],  # by digest too: the index digest asked is found again
        layers=records,
        config=image_config.config,
        os=image_config.os,
        architecture=image_config.architecture,
        created=image_config.created,
        manifest=digest,
        size=total,
    )


def _download(
    client: RegistryClient,
    store: Store,
    layer: mf.Descriptor,
    what: str,
    done: int,
    total: int,
    progress: Callable[[str], None],
) -> None:
    last = [time.monotonic()]

    def report(got: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            progress(f"{what} {done + got}/{total} bytes")

    with client.blob(layer.digest, layer.size, what) as body:
        store.put_blob(body, layer.digest, what, layer.size, report)
