"""Reading OCI and Docker manifests, indexes and image configs (all hostile input)."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from typing import Any

from plugins.images.digest import DigestError, check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
#: Larger manifests or configs are refused: they are read whole into memory.
MAX_JSON = 4 << 20
#: More layers than overlayfs can stack (its mount data holds every lower dir).
MAX_LAYERS = 40
#: The kernel's names of this machine's architecture in OCI's words.
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
#: Config keys a job takes from the image, with the types they must have.
CONFIG_KEYS: dict[str, type | tuple[type, ...]] = {
    "Env": list,
    "Cmd": list,
    "Entrypoint": list,
    "User": str,
    "WorkingDir": str,
    "Labels": dict,
    "ExposedPorts": dict,
    "Volumes": dict,
    "StopSignal": str,
}


class ManifestError(Exception):
    """A manifest, index or config is malformed or does not fit; the message says how."""


def this_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", ARCHITECTURES.get(machine, machine)


def load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_JSON:
        raise ManifestError(f"{what}: larger than {MAX_JSON} bytes")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return value


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: its media type, digest and size."""

    media_type: str
    digest: str
    size: int | None
    annotations: dict[str, str]


def descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"{what}: not an object")
    try:
        digest = check_digest(value.get("digest"), what)
    except DigestError as exc:
        raise ManifestError(str(exc)) from None
    size = value.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ManifestError(f"{what}: size {size!r} is not a byte count")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"{what}: annotations is not an object")
    return Descriptor(str(value.get("mediaType", "")), digest, size, annotations)


def media_type(doc: dict[str, Any], fallback: str) -> str:
    kind = doc.get("mediaType")
    if isinstance(kind, str) and kind:
        return kind
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc:
        return OCI_MANIFEST
    return fallback


def choose_platform(index: dict[str, Any], what: str) -> Descriptor:
    """The manifest of an index for linux on this machine's architecture."""
    wanted_os, wanted_arch = this_platform()
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{what}: an index without manifests")
    seen = []
    for i, entry in enumerate(entries):
        found = descriptor(entry, f"{what}: manifests[{i}]")
        plat = entry.get("platform") or {}
        if not isinstance(plat, dict):
            continue
        seen.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if plat.get("os") == wanted_os and plat.get("architecture") == wanted_arch:
            return found
    raise ManifestError(
        f"{what}: no manifest for {wanted_os}/{wanted_arch} (it has {', '.join(seen) or 'none'})"
    )


def layers_of(manifest: dict[str, Any], what: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of an image manifest."""
    if manifest.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion {manifest.get('schemaVersion')!r} is not 2")
    config = descriptor(manifest.get("config"), f"{what}: config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ManifestError(f"{what}: layers is not a list")
    if len(layers) > MAX_LAYERS:
        raise ManifestError(f"{what}: {len(layers)} layers, more than {MAX_LAYERS}")
    found = [descriptor(layer, f"{what}: layers[{i}]") for i, layer in enumerate(layers)]
    for i, item in enumerate([config, *found]):
        if item.size is None:  # without it, a registry could stream a blob forever
            raise ManifestError(f"{what}: {'config' if i == 0 else f'layers[{i - 1}]'} has no size")
    for i, layer in enumerate(found):
        if "foreign" in layer.media_type or "nondistributable" in layer.media_type:
            raise ManifestError(f"{what}: layers[{i}] is a foreign layer ({layer.media_type})")
    return config, found


@dataclass(frozen=True)
class ImageConfig:
    """What Corral uses of an image config."""

    os: str
    architecture: str
    created: str | None
    diff_ids: list[str]
    config: dict[str, Any]


def image_config(data: bytes, what: str) -> ImageConfig:
    doc = load_json(data, what)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise ManifestError(f"{what}: no rootfs.diff_ids")
    try:
        diff_ids = [check_digest(d, f"{what}: diff_id") for d in rootfs["diff_ids"]]
    except DigestError as exc:
        raise ManifestError(str(exc)) from None
    raw = doc.get("config") or {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{what}: config is not an object")
    config: dict[str, Any] = {}
    for key, kind in CONFIG_KEYS.items():
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise ManifestError(f"{what}: config.{key} has the wrong type")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ManifestError(f"{what}: config.{key} must be a list of strings")
        config[key] = value
    for entry in config.get("Env", []):
        if "=" not in entry or "\0" in entry or entry.startswith("="):
            raise ManifestError(f"{what}: config.Env entry {entry!r} is not NAME=VALUE")
    # A job's user, directory and environment travel NUL-separated to the container's
    # init: a NUL in them would smuggle a field (privileged=1) into every job.
    for key in ("User", "WorkingDir"):
        if any(c in config.get(key, "") for c in "\0\n"):
            raise ManifestError(f"{what}: config.{key} holds a NUL or newline")
    created = doc.get("created")
    return ImageConfig(
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        created=created if isinstance(created, str) else None,
        diff_ids=diff_ids,
        config=config,
    )
