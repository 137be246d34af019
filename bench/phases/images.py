"""Images: pull+unpack against skopeo+umoci, create from an image against a rootfs, disk of 100.

A daemon of the phase's own (a :class:`supervisor.testing.PrivateDaemon`: it
must reach the phase's registry over plain HTTP, set at its start) and Debian's
``docker-registry`` on a free loopback port, both stopped at the end. The
image: three layers of about 100 MB in all (the busybox rootfs, and two layers
of 48 MiB each, files half random and half zeros, so gzip has work), pushed
with ``skopeo``.

- Pull: each round empties Corral's store (``image-remove`` + ``image-prune``)
  and times ``image-pull``; the peer is ``skopeo copy docker://... oci:DIR`` then
  ``umoci unpack`` of it into a bundle (removed after each round), round-robin.
- Create: ``create {"image": ...}`` against ``create`` (rootfs), round-robin,
  each followed by an untimed destroy.
- Disk: the bytes of the store's layer directories and of the containers'
  directories with 1 and then 100 containers of the image running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.host import BASE_ROOTFS, INIT, log, timed
from bench.phases.common import Bench, interleave
from bench.stats import summarize
from plugins.fs.quota import tree_usage
from supervisor.client import Client
from supervisor.testing import PrivateDaemon
from tests.images.oci import ImageSpec, Layer, LayerBuilder, tar_of_tree, write_layout
from tests.images.registry import REGISTRY_BIN, SKOPEO, Registry, run_registry

UMOCI = shutil.which("umoci") or "/usr/bin/umoci"
LAYER_MIB = 48
NAME = "corral/bench"


def _big_layer(tag: int) -> Layer:
    """*LAYER_MIB* MiB in 1 MiB files, each half random and half zeros."""
    builder = LayerBuilder().dir(f"data{tag}")
    for i in range(LAYER_MIB):
        builder.file(f"data{tag}/f{i}", os.urandom(1 << 19) + bytes(1 << 19))
    return Layer(builder.bytes())


def _tree_bytes(paths: list[Path]) -> int:
    """Bytes allocated under *paths*, each inode counted once per path."""
    return sum(tree_usage(path).bytes for path in paths)


def measure(bench: Bench, pulls: int, creates: int, containers: int) -> dict[str, Any]:
    """The three figures (see the module docstring)."""
    for tool in (REGISTRY_BIN, Path(SKOPEO), Path(UMOCI)):
        if not tool.exists():
            raise RuntimeError(
                f"{tool} is not installed (scripts/install.sh, bench/install-peers.sh)"
            )
    work = Path(tempfile.mkdtemp(prefix="cbench-images-", dir="/tmp"))
    out: dict[str, Any] = {}
    try:
        log("  building and pushing a 3-layer image")
        spec = ImageSpec([Layer(tar_of_tree(BASE_ROOTFS)), _big_layer(1), _big_layer(2)])
        layout = write_layout(work / "layout", {"1": spec})
        out["image_bytes_compressed"] = sum(
            p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir()
        )
        out["image_bytes_uncompressed"] = sum(len(layer.tar) for layer in spec.layers)
        with run_registry(work / "registry") as registry:
            ref = registry.push(layout, "1", f"{NAME}:1")
            daemon = PrivateDaemon(
                INIT,
                BASE_ROOTFS,
                tables={"images": {"plain_http": [registry.address]}},
                env={"CORRAL_BLOCK_PLUGINS": ""},
            ).start()
            try:
                with daemon.client(timeout=600) as client:
                    out["pull"] = _pulls(bench, client, registry, ref, work, pulls)
                    out["create"] = _creates(bench, client, ref, creates)
                    out["disk"] = _disk(daemon, client, ref, containers)
            finally:
                daemon.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _pulls(
    bench: Bench, client: Client, registry: Registry, ref: str, work: Path, n: int
) -> dict[str, Any]:
    def corral() -> float:
        for image in client.call("image-list"):
            client.call("image-remove", image["id"])
        client.call("image-prune")
        t0 = time.perf_counter()
        client.call_with_progress("image-pull", ref)
        return (time.perf_counter() - t0) * 1000

    def skopeo_umoci() -> float:
        target = work / "peer"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        copy = [SKOPEO, "--insecure-policy", "copy", "-q", "--src-tls-verify=false"]
        ms = timed([*copy, f"docker://{ref}", f"oci:{target / 'layout'}:1"], timeout=600)
        ms += timed([UMOCI, "unpack", "--image", f"{target / 'layout'}:1", str(target / "bundle")])
        shutil.rmtree(target, ignore_errors=True)
        return ms

    samples = interleave(bench, {"corral": corral, "skopeo+umoci": skopeo_umoci}, n)
    return {name: summarize(s) for name, s in samples.items()}


def _creates(bench: Bench, client: Client, ref: str, n: int) -> dict[str, Any]:
    def create(config: dict[str, Any] | None) -> float:
        t0 = time.perf_counter()
        handle = client.create(config)
        ms = (time.perf_counter() - t0) * 1000
        client.destroy(handle)
        return ms

    samples = interleave(
        bench,
        {"image": lambda: create({"image": ref}), "rootfs": lambda: create(None)},
        n,
    )
    return {name: summarize(s) for name, s in samples.items()}


def _disk(daemon: PrivateDaemon, client: Client, ref: str, n: int) -> dict[str, Any]:
    layers = daemon.depot / ".images" / "layers"
    handles: list[str] = []
    out: dict[str, Any] = {"containers": n}
    try:
        for count in (1, n):
            while len(handles) < count:
                handles.append(client.create({"image": ref}))
            # Every container writes a little, as a running one would.
            client.run(handles[-1], "echo hello > /tmp/file", user="root")
            dirs = [daemon.depot / h for h in handles]
            out[f"layers_bytes_{count}"] = _tree_bytes([layers])
            out[f"containers_bytes_{count}"] = _tree_bytes(dirs)
    finally:
        for handle in handles:
            client.destroy(handle)
    subprocess.run(["sync"], check=False)
    return out
