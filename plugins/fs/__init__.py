"""Filesystem plugin: each container's root is a private overlay of a base rootfs.

The container's writable layer (``upper/``) and overlay work dir live in its
depot directory; the overlay itself is mounted by the container's init inside
the container's own mount namespace, so the host never sees it and it vanishes
with the container. Bind mounts from the create CONFIG follow, in order.

Config: the default base is ``[containers] rootfs``; ``create`` may name
another directory with ``rootfs``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from supervisor.config import Config
from supervisor.container import Container
from supervisor.errors import InvalidRequest
from supervisor.hookspecs import hookimpl
from supervisor.sandbox import LaunchPlan, Mount

NAME = "fs"
#: Characters that overlayfs options or the launch spec cannot carry in a path.
FORBIDDEN = (",", ":", "\t", "\n", "\0")


class _Settings:
    rootfs: Path = Path("/var/lib/corral/rootfs/base")


settings = _Settings()


@hookimpl
def corral_configure(config: Config) -> None:
    settings.rootfs = config.containers.rootfs


def _clean_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidRequest(f"{what}: {value!r} is not an absolute path")
    if any(c in value for c in FORBIDDEN) or "/../" in value + "/":
        raise InvalidRequest(f"{what}: {value!r} contains a character or '..' that is not allowed")
    return value


def _rootfs(value: Any) -> str:
    path = _clean_path(value, "rootfs")
    if not (Path(path) / "bin").is_dir():
        raise InvalidRequest(f"rootfs: {path} is not a root filesystem (no bin/ directory)")
    return path


def _bind_mounts(value: Any) -> list[list[Any]]:
    if not isinstance(value, list):
        raise InvalidRequest(
            'bind_mounts: must be a list of [HOST_PATH, CONTAINER_PATH, {"mode": "ro"|"rw"}]'
        )
    mounts = []
    for i, item in enumerate(value):
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise InvalidRequest(f"bind_mounts[{i}]: must be [HOST_PATH, CONTAINER_PATH, OPTIONS?]")
        host = _clean_path(item[0], f"bind_mounts[{i}] host path")
        target = _clean_path(item[1], f"bind_mounts[{i}] container path")
        options = item[2] if len(item) == 3 else {}
        mode = options.get("mode", "ro") if isinstance(options, dict) else None
        if mode not in ("ro", "rw") or set(options) - {"mode"}:
            raise InvalidRequest(f'bind_mounts[{i}]: options must be {{"mode": "ro"|"rw"}}')
        if not Path(host).exists():
            raise InvalidRequest(f"bind_mounts[{i}]: host path {host} does not exist")
        mounts.append([host, target, {"mode": mode}])
    return mounts


@hookimpl
def corral_create_options() -> dict[str, Any]:
    return {"rootfs": _rootfs, "bind_mounts": _bind_mounts}


@hookimpl
def corral_container_prepare(
    container: Container, plan: LaunchPlan, restoring: bool
) -> AbstractAsyncContextManager[None]:
    return _layers(container, plan, restoring)


@asynccontextmanager
async def _layers(container: Container, plan: LaunchPlan, restoring: bool) -> AsyncIterator[None]:
    upper, work = container.path / "upper", container.path / "work"
    try:
        if not restoring:
            upper.mkdir()
            work.mkdir()
            plan.root_dir.mkdir(exist_ok=True)
        base = container.options.get("rootfs", str(settings.rootfs))
        plan.root_mount = Mount(
            "overlay", "overlay", "/", (), f"lowerdir={base},upperdir={upper},workdir={work}"
        )
        for host, target, options in container.options.get("bind_mounts", []):
            flags: tuple[str, ...] = ("bind", "rec", "mkdir" if Path(host).is_dir() else "mkfile")
            if options["mode"] == "ro":
                flags += ("ro", "nosuid", "nodev")
            plan.mounts.append(Mount("none", host, target, flags))
        yield
    finally:
        if not container.detaching:
            # overlay's work dir holds root-only 000 entries; rmtree as root copes.
            await trio.to_thread.run_sync(_remove, (upper, work, plan.root_dir))


def _remove(paths: tuple[Path, ...]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
