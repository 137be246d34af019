"""Filesystem plugin: root filesystem, disk quota, bind mounts and ``copy``.

Each container's root is a private overlay of a base rootfs. Its writable
layer (``upper/``) and the overlay work dir live in its depot directory or,
with ``disk_size_mb``, on a filesystem of that size (:mod:`plugins.fs.quota`).
Every mount is made by the container's init inside the container's own mount
namespace, so the host never sees it and it vanishes with the container. Bind
mounts from the create CONFIG follow, in order, their container paths resolved
inside the container root by the init. ``copy in``/``copy out`` are in
:mod:`plugins.fs.command`.

Config: the default base is ``[containers] rootfs``; ``create`` may name
another directory with ``rootfs``, or an image (the ``images`` plugin, prepared
first, then puts the image's layers in ``LaunchPlan.root_layers``, which this
plugin stacks as the overlay's lower directories). The plugin has no table of
its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from plugins.fs import command, direct, quota
from supervisor.api import (
    Config,
    ContainerView,
    Handler,
    InvalidRequest,
    LaunchPlan,
    Limit,
    Mount,
    StashKey,
    hookimpl,
)

NAME = "fs"
#: Characters that overlayfs options or the launch spec cannot carry in a path.
FORBIDDEN = (",", ":", "\t", "\n", "\0")
#: How long destroy waits for the kernel to release a container's loop device.
LOOP_RELEASE_WAIT = 5.0
#: Seconds a walked usage of a writable layer without quota is reused by a metrics
#: scrape, which reads every container (``info`` walks afresh).
TREE_USAGE_TTL = 2.0

#: Layers checked for emptiness between two checkpoints of the event loop (~8 us each).
EMPTY_CHECK_BATCH = 50

#: A direct root's real path and (st_dev, st_ino), checked at prepare, until attach sees
#: the container's root is that directory.
DIRECT_ROOT = StashKey[tuple[str, tuple[int, int]]]()
#: When the usage of a container's writable layer was walked, and what it was.
TREE_USAGE = StashKey[tuple[float, quota.Usage]]()

log = structlog.get_logger()


# -- create options ----------------------------------------------------------------


def _clean_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidRequest(f"{what}: {value!r} is not an absolute path")
    if any(c in value for c in FORBIDDEN) or any(p in (".", "..") for p in value.split("/")):
        raise InvalidRequest(
            f"{what}: {value!r} contains a character (, : TAB newline NUL) or a '.' or '..' component"
        )
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
        if target.strip("/") == "":
            raise InvalidRequest(f"bind_mounts[{i}]: container path {target!r} would hide the root")
        options = item[2] if len(item) == 3 else {}
        mode = options.get("mode", "ro") if isinstance(options, dict) else None
        if mode not in ("ro", "rw") or set(options) - {"mode"}:
            raise InvalidRequest(f'bind_mounts[{i}]: options must be {{"mode": "ro"|"rw"}}')
        if not Path(host).exists():
            raise InvalidRequest(f"bind_mounts[{i}]: host path {host} does not exist")
        mounts.append([host, target, {"mode": mode}])
    return mounts


def _disk_size_mb(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"disk_size_mb: {value!r} is not a whole number of MB")
    if not quota.MIN_MB <= value <= quota.MAX_MB:
        raise InvalidRequest(f"disk_size_mb: {value} is outside {quota.MIN_MB}..{quota.MAX_MB} MB")
    return value


class FilesystemPlugin:
    """The built-in ``fs`` plugin (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self.rootfs = config.containers.rootfs
        self.depot = config.daemon.depot
        init = (config.tables.get("isolation") or {}).get("init", direct.DEFAULT_INIT)
        #: Never a container's writable root (``rootfs_mode`` direct), nor near one.
        self.own_dirs = (
            self.depot,
            self.rootfs,
            config.daemon.socket.parent,
            Path(init),  # the binary: a root holding it could replace it
        )

    @hookimpl
    def corral_startup(self, live_handles: frozenset[str]) -> None:
        """Detach loop devices left by containers of this depot that no longer exist (a crash)."""
        for name, handle in quota.images_of_depot(self.depot).items():
            if handle not in live_handles:
                log.warning("leftover loop device detached", device=name, handle=handle)
                quota.detach(name)

    @hookimpl
    def corral_create_options(self) -> dict[str, Any]:
        return {
            "rootfs": _rootfs,
            "rootfs_mode": direct.check_mode,
            "bind_mounts": _bind_mounts,
            "disk_size_mb": _disk_size_mb,
        }

    @hookimpl
    def corral_spare_directories(self) -> dict[str, int]:
        """The overlay's layers and mount point, made new and empty for a spare container directory."""
        return {"upper": 0o755, "work": 0o755, "rootfs": 0o755}

    @hookimpl
    def corral_commands(self) -> dict[str, Handler]:
        return {"copy": command.copy}

    @hookimpl
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._layers(container, plan, restoring)

    @asynccontextmanager
    async def _layers(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        size_mb: int | None = container.options.get("disk_size_mb")
        if container.options.get("rootfs_mode") == "direct":
            async with self._direct_root(container, plan, restoring):
                yield
            return
        image = container.path / quota.IMAGE_NAME
        if size_mb is None:
            upper, work = container.path / "upper", container.path / "work"
        else:
            disk = container.path / quota.MOUNT_NAME
            upper, work = disk / quota.UPPER, disk / quota.WORK
        try:
            if not restoring:
                if size_mb is None:  # made ahead, empty, in a spare directory (see below)
                    upper.mkdir(exist_ok=True)
                    work.mkdir(exist_ok=True)
                else:
                    await _make_image(container, size_mb)
                plan.root_dir.mkdir(exist_ok=True)
            if size_mb is not None:
                # Mounted by the init on its private copy of DEPOT/H/disk, before the root overlay.
                plan.mounts.append(Mount("ext4", str(image), str(disk), ("loop", "host")))
            if plan.root_layers:  # an image's layers (the images plugin): overlay wants top first
                base = ":".join(str(layer) for layer in reversed(plan.root_layers))
            else:
                base = container.options.get("rootfs", str(self.rootfs))
            plan.root_mount = Mount(
                "overlay", "overlay", "/", (), f"lowerdir={base},upperdir={upper},workdir={work}"
            )
            for host, target, options in container.options.get("bind_mounts", []):
                plan.mounts.append(_bind_mount(host, target, options))
            yield
        finally:
            await command.abandon_copies(container)
            if not container.detaching and size_mb is not None:
                # The image is mounted in the container's mount namespace, which goes
                # after destroy has replied (see the isolation plugin's InitSandbox.kill).
                container.after_destroy(partial(_release_loops, container, image))
            # The layers, the image and the mount points are in the container's
            # directory, which the core removes next.

    @asynccontextmanager
    async def _direct_root(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        """The ``rootfs`` directory itself as the root (see :mod:`plugins.fs.direct`)."""
        options = container.options
        for key, why in (
            ("disk_size_mb", "the disk quota is a layer over the root, and there is none"),
            ("image", "an image's layers are read-only and shared"),
        ):
            if options.get(key) is not None:
                raise InvalidRequest(f'create: "rootfs_mode": "direct" cannot go with {key}: {why}')
        if "rootfs" not in options:
            raise InvalidRequest(
                f'create: "rootfs_mode": "direct" needs a rootfs of the client\'s: the default '
                f"{self.rootfs} is every container's shared base"
            )
        fd = -1
        try:
            if not restoring:
                fd, real = direct.open_root(options["rootfs"], self.own_dirs)
                container.stash[DIRECT_ROOT] = (real, direct.identity(fd))
                plan.root_dir.mkdir(exist_ok=True)
                plan.root_mount = direct.root_mount(real)
            for host, target, bind_options in options.get("bind_mounts", []):
                plan.mounts.append(_bind_mount(host, target, bind_options))
            yield
        finally:
            if fd >= 0:
                os.close(fd)
            await command.abandon_copies(container)

    @hookimpl
    def corral_container_attach(
        self, container: ContainerView, restoring: bool
    ) -> AbstractAsyncContextManager[None] | None:
        checked = container.stash.pop(DIRECT_ROOT, None)
        if checked is None or restoring:
            return None
        return self._same_root(container, *checked)

    @asynccontextmanager
    async def _same_root(
        self, container: ContainerView, path: str, checked: tuple[int, int]
    ) -> AsyncIterator[None]:
        """Fail the create if the root the init mounted is not the directory checked (a
        path swapped meanwhile), before any job runs in it."""
        sandbox = container.sandbox
        assert sandbox is not None
        if direct.identity_of(f"/proc/{sandbox.pid}/root") != checked:
            raise InvalidRequest(
                f"rootfs {path}: it changed while the container was made (a path component "
                "replaced?); nothing ran in it"
            )
        yield

    @hookimpl
    def corral_container_info(self, container: ContainerView) -> Any:
        return _disk_stat(container)

    @hookimpl
    def corral_containers_stats(self, containers: Sequence[ContainerView]) -> Any:
        """``disk_stat`` of each container, as ``info`` has it (a walked usage kept 2 s)."""
        return _disk_stats(containers)

    @hookimpl
    def corral_limit_resources(self) -> dict[str, Limit]:
        return {"disk": DiskLimit()}


def _bind_mount(host: str, target: str, options: dict[str, Any]) -> Mount:
    flags: tuple[str, ...] = ("bind", "rec", "mkdir" if Path(host).is_dir() else "mkfile")
    if options["mode"] == "ro":
        flags += ("ro", "nosuid", "nodev")
    return Mount("none", host, target, flags)


async def _make_image(container: ContainerView, size_mb: int) -> None:
    start = trio.current_time()
    try:
        await trio.to_thread.run_sync(quota.make_image, container.path, size_mb)
    except quota.QuotaError as exc:
        raise InvalidRequest(
            f"container {container.handle}: disk_size_mb {size_mb}: {exc}"
        ) from None
    container.log.debug("disk image made", size_mb=size_mb, seconds=trio.current_time() - start)


def _release_loops(container: ContainerView, image: Path) -> None:
    """Wait until the kernel released the container's loop device (autoclear); detach a straggler.

    Blocking: run after destroy, in a worker thread.
    """
    deadline = time.monotonic() + LOOP_RELEASE_WAIT
    while quota.loops_of(image) and time.monotonic() < deadline:
        time.sleep(0.02)
    for name in quota.loops_of(image):
        container.log.warning("loop device still attached after destroy; detaching", device=name)
        quota.detach(name)


# -- info and limit -------------------------------------------------------------------


def _fresh_tree_usage(container: ContainerView) -> quota.Usage | None:
    """The walked usage of the container's writable layer, if walked less than
    :data:`TREE_USAGE_TTL` ago."""
    cached = container.stash.get(TREE_USAGE, None)
    if cached is not None and trio.current_time() - cached[0] < TREE_USAGE_TTL:
        return cached[1]
    return None


async def _tree_usage(container: ContainerView) -> quota.Usage:
    """The usage of the container's writable layer, walked now (in a worker thread)."""
    layer = container.path / "upper"
    used = (
        quota.EMPTY
        if quota.is_empty(layer)
        else await trio.to_thread.run_sync(quota.tree_usage, layer)
    )
    container.stash[TREE_USAGE] = (trio.current_time(), used)
    return used


def _disk_table(container: ContainerView, tree_used: quota.Usage | None) -> dict[str, Any]:
    """``disk_stat``: one ``statvfs`` with a quota, else *tree_used* (the walked layer)."""
    size_mb = container.options.get("disk_size_mb")
    used = tree_used
    if size_mb is not None:
        sandbox = container.sandbox
        alive = sandbox is not None and sandbox.alive
        used = quota.usage(sandbox.pid) if alive else None  # type: ignore[union-attr]
    return {
        "bytes_used": None if used is None else used.bytes,
        "inodes_used": None if used is None else used.inodes,
        "limit": None if size_mb is None else size_mb * 1024 * 1024,
    }


async def _disk_stat(container: ContainerView) -> dict[str, Any]:
    size_mb = container.options.get("disk_size_mb")
    tree_used = await _tree_usage(container) if size_mb is None else None
    return {"disk_stat": _disk_table(container, tree_used), "limits": {"disk": size_mb}}


async def _disk_stats(containers: Sequence[ContainerView]) -> dict[str, dict[str, Any]]:
    """``disk_stat`` of many containers: the layers without quota whose usage is older than
    :data:`TREE_USAGE_TTL` are walked in one worker-thread job for them all (a job each
    cost a round trip to the thread each, most of the time of an idle container's walk),
    but for the empty ones, seen empty on the event loop (one ``getdents``)."""
    stale = []
    now = trio.current_time()
    for i, container in enumerate(c for c in containers if c.options.get("disk_size_mb") is None):
        if i % EMPTY_CHECK_BATCH == EMPTY_CHECK_BATCH - 1:
            await trio.lowlevel.checkpoint()
        if _fresh_tree_usage(container) is not None:
            continue
        if quota.is_empty(container.path / "upper"):
            container.stash[TREE_USAGE] = (now, quota.EMPTY)
        else:
            stale.append(container)
    if stale:
        layers = [c.path / "upper" for c in stale]
        walked = await trio.to_thread.run_sync(lambda: [quota.tree_usage(p) for p in layers])
        now = trio.current_time()
        for container, used in zip(stale, walked, strict=True):
            container.stash[TREE_USAGE] = (now, used)
    out = {}
    for container in containers:
        cached = container.stash.get(TREE_USAGE, None)
        tree_used = cached[1] if cached is not None else None
        out[container.handle] = {"disk_stat": _disk_table(container, tree_used)}
    return out


class DiskLimit:
    """``limit HANDLE disk``: the size of the writable layer in MB (null: unlimited).

    Read-only: the size is fixed at create (``disk_size_mb``). Growing it would
    need an online ext4 resize through an fd on the mounted filesystem, which
    only exists inside the container's mount namespace, detached from any path.
    """

    async def read(self, container: ContainerView) -> Any:
        return container.options.get("disk_size_mb")

    async def write(self, container: ContainerView, value: Any) -> Any:
        raise InvalidRequest(
            f"container {container.handle}: limit disk: the disk size can only be set at create "
            "(disk_size_mb)"
        )
