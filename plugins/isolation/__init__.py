"""Isolation plugin: namespaces, pivot_root and the container init (PID 1).

Each container is a ``corral-init`` process (C, see README.md here) in new pid,
mount, uts, ipc and network namespaces, pivoted into the root the launch plan
describes. The daemon talks to it over a Unix socket in the container's depot
directory. Killing the init releases every namespace and mount of the container
at once, so nothing is left behind even if the daemon died half-way (on
destroy the daemon holds the mount namespace a little longer, see
``InitSandbox.kill``). The launcher is forked ahead, with its namespaces made
(:mod:`.launcher`); it gets the container's set-up as soon as the filesystem
plugin has planned the root, and mounts the root while the other plugins
prepare; the launch then adds the plan's other mounts and the cgroups to join.
So plugins prepared after this one (cgroups, net, third-party ones) may add
mounts to the plan but not change its root, root mount or host
mounts: the launch fails with an error saying so.

Every job runs under a seccomp filter (:mod:`.seccomp`): the default profile,
compiled when the daemon starts, or the one the ``create`` option ``seccomp``
names, or none (``false``). The launch spec carries the container's filters; its
init keeps them and loads the job's just before each exec.

Every container has a user namespace (:mod:`.userns`): by default its ids are a block
of host ids of its own, which its state records; the ``create`` option ``userns``
``false`` gives it the host's ids.

The ``create`` option ``fuse`` gives the container ``/dev/fuse``, and its jobs a mount
namespace owned by its user namespace, in which its privileged jobs have
``CAP_SYS_ADMIN`` (:data:`.seccomp.ADMIN_CAPS`): they can mount FUSE filesystems.

Config (``[isolation]``): ``init`` is the path of the built ``corral-init``,
``seccomp_profile`` the default profile, ``userns`` and ``userns_*`` the ids.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import structlog
import trio

from plugins.isolation import seccomp, spec, userns
from plugins.isolation.launcher import IN_ROOT, Launcher, LaunchError, Zygote
from plugins.isolation.sandbox import InitSandbox, process_start_time
from plugins.isolation.seccomp import Filters, ProfileCache, ProfileError
from plugins.isolation.userns import HOST_IDS, IdBlocks, IdMap
from supervisor.api import (
    Config,
    ConfigError,
    ContainerView,
    CorralError,
    InvalidRequest,
    LaunchPlan,
    LimitExceeded,
    Mount,
    StashKey,
    hookimpl,
    setting,
)

NAME = "isolation"
SOCKET_NAME = "init.sock"
#: The host's FUSE device, which the ``fuse`` option needs (the fuse module loaded).
HOST_FUSE = Path("/dev/fuse")
#: sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107

log = structlog.get_logger()


class LaunchFailed(CorralError):
    """``corral-init`` could not build the container."""


@dataclass(frozen=True)
class Settings:
    """``[isolation]``."""

    init: Path = setting(Path("/usr/local/lib/corral/corral-init"), "the container init binary")
    seccomp_profile: Path = setting(
        seccomp.DEFAULT_PROFILE,
        "the jobs' default seccomp profile (Corral's rules go on top, see the plugin's README)",
    )
    userns: bool = setting(
        True,
        "give each container ids of its own (a block of 65,536 host ids) unless its create "
        'says `"userns": false`; off by itself, with a warning, where the kernel or the '
        "depot's filesystem cannot",
    )
    userns_first_id: int = setting(
        0x10000000, "the first host id of the containers' blocks (268435456)"
    )
    userns_blocks: int = setting(
        8192, "blocks of 65,536 host ids, so at most that many containers with ids of their own"
    )


RootPlan = tuple[Path, Mount | None, tuple[Mount, ...]]


class _Launch(NamedTuple):
    launcher: Launcher
    #: What the set-up sent at prepare was made from (see :func:`_root_plan`).
    root: RootPlan
    ids: IdMap


#: A new container's launcher, from its prepare to its launch.
LAUNCH = StashKey[_Launch]()


def _root_plan(plan: LaunchPlan) -> RootPlan:
    """The parts of the plan the set-up sent at prepare holds: root, root mount, host mounts."""
    return plan.root_dir, plan.root_mount, tuple(m for m in plan.mounts if "host" in m.flags)


def _userns_option(value: Any) -> bool:
    """``userns``: true (ids of the container's own) or false (the host's ids)."""
    if isinstance(value, bool):
        return value
    raise InvalidRequest(f"userns: {value!r} is not true or false")


def _fuse_option(value: Any) -> bool:
    """``fuse``: true (``/dev/fuse``, and privileged jobs that may mount) or false."""
    if isinstance(value, bool):
        return value
    raise InvalidRequest(f"fuse: {value!r} is not true or false")


def _seccomp_option(value: Any) -> bool | str:
    """``seccomp``: true (the default profile), false (none), or a profile file's absolute path."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("/") and "\0" not in value:
        return value
    raise InvalidRequest(
        f"seccomp: {value!r} is not true, false or the absolute path of a profile file"
    )


def _socket_path(container: ContainerView) -> Path:
    socket_path = container.path / SOCKET_NAME
    if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
        raise InvalidRequest(
            f"container {container.handle}: socket path {socket_path} is too long for a Unix socket"
        )
    return socket_path


class IsolationPlugin:
    """The built-in ``isolation`` plugin, the launch plugin (see the module docstring)."""

    def __init__(self, settings: Settings, config: Config) -> None:
        if not os.access(settings.init, os.X_OK):
            raise ConfigError(
                f"[{NAME}] init: {settings.init} is not an executable; build it with "
                f"`python -m plugins.isolation.build {settings.init}`"
            )
        self.init = settings.init
        # Compiled at each start: a restarted daemon uses the profile as it is now, while
        # the containers made before keep the filters their inits hold.
        try:
            self.filters, skipped = seccomp.compile_default(settings.seccomp_profile)
        except ProfileError as exc:
            raise ConfigError(f"[{NAME}] seccomp_profile: {exc}") from None
        if skipped:
            log.warning(
                "seccomp profile names syscalls libseccomp does not know; skipped",
                profile=str(settings.seccomp_profile),
                syscalls=skipped,
            )
        self.profiles = ProfileCache()
        self.seccomp_profile = settings.seccomp_profile
        #: The default profile for ``fuse`` containers, compiled on first use.
        self.admin_filters: Filters | None = None
        self.depot = config.daemon.depot
        if settings.userns_blocks < 1 or not (
            0 < settings.userns_first_id
            and settings.userns_first_id + settings.userns_blocks * userns.BLOCK <= 2**31
        ):
            raise ConfigError(
                f"[{NAME}] userns_first_id, userns_blocks: the blocks must lie between host "
                "ids 1 and 2**31 (the kernel's ping_group_range and some tools stop there)"
            )
        self.id_blocks = IdBlocks(settings.userns_first_id, settings.userns_blocks)
        #: Why containers cannot have ids of their own here (None: they can).
        depot = next(p for p in (self.depot, *self.depot.parents) if p.exists())  # made later
        self.no_own_ids = userns.probe(settings.init, settings.userns_first_id, [depot])
        self.userns_default = settings.userns and self.no_own_ids is None
        if settings.userns and self.no_own_ids is not None:
            log.warning(
                "containers get the host's ids: no user namespace with ids of their own here",
                reason=self.no_own_ids,
            )
        #: Forks every launcher (started on first use, stopped at shutdown).
        self.zygote: Zygote | None = Zygote(settings.init)

    @hookimpl
    def corral_create_options(self) -> dict[str, Any]:
        return {"fuse": _fuse_option, "seccomp": _seccomp_option, "userns": _userns_option}

    async def _filters(self, option: bool | str, admin: bool) -> Filters | None:
        """The container's filters; a client's profile compiled once per version of its
        file. With *admin* the privileged one is for :data:`.seccomp.ADMIN_CAPS`, and
        none is stacked: a job joins its mount namespace before it loads its filter."""
        if option is False:
            return None
        if option is True and not admin:
            return self.filters
        if option is True:
            if self.admin_filters is None:  # the profile compiled at start, so no error now
                compiled = partial(
                    seccomp.compile_default, self.seccomp_profile, seccomp.ADMIN_CAPS
                )
                self.admin_filters = (await trio.to_thread.run_sync(compiled))[0]
            filters = self.admin_filters
        else:
            caps = seccomp.ADMIN_CAPS if admin else seccomp.PRIVILEGED_CAPS
            try:
                filters = await trio.to_thread.run_sync(self.profiles.get, Path(option), caps)
            except ProfileError as exc:
                raise InvalidRequest(f"create: {exc}") from None
        return filters._replace(unprivileged_rest=None) if admin else filters

    @hookimpl  # right after fs (see BUILTIN_PLUGINS): the launcher works while the others prepare
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        return self._early_launcher(container, plan, restoring)

    @asynccontextmanager
    async def _early_launcher(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        """The container's ids, held until it is destroyed; a new container's launcher."""
        state = container.plugin_state(NAME)
        if restoring:
            ids = self._restored_ids(container, state.get("ids"))
        else:
            ids = self._take_ids(container)
        try:
            if ids.own:
                state["ids"] = ids.first
            if restoring:
                yield
            else:
                async with self._setting_up(container, plan, ids):
                    yield
        finally:
            if not container.detaching:
                self.id_blocks.give_back(ids)

    @asynccontextmanager
    async def _setting_up(
        self, container: ContainerView, plan: LaunchPlan, ids: IdMap
    ) -> AsyncIterator[None]:
        """A launcher for the new container, given its set-up at once (see the module
        docstring)."""
        socket_path = _socket_path(container)
        fuse = container.options.get("fuse", False)
        if fuse and not HOST_FUSE.exists():
            raise InvalidRequest("create: fuse: this host has no /dev/fuse (`modprobe fuse`)")
        filters = await self._filters(container.options.get("seccomp", True), admin=fuse)
        plan.root_dir.mkdir(exist_ok=True)
        setup = spec.render_setup(
            plan, container.handle, socket_path, container.path, filters, ids, admin=fuse
        )
        launcher = self.zygote.launcher() if self.zygote is not None else Launcher(self.init)
        container.stash[LAUNCH] = _Launch(launcher, _root_plan(plan), ids)
        plan.network_namespace = launcher.network_namespace
        try:
            launcher.send(setup.encode("utf-8", "surrogateescape"))
            yield
        finally:
            container.stash.pop(LAUNCH, None)
            launcher.close()
            if not container.detaching:
                # The next container's launcher, forked once destroy has replied and this
                # container is cleaned up: making its namespaces (the network one holds
                # the kernel's rtnl lock) would slow what is under way now.
                container.after_destroy(partial(trio.from_thread.run_sync, self._fork_ahead))

    def _restored_ids(self, container: ContainerView, first: int | None) -> IdMap:
        """The block a container made before this start has, taken again."""
        if first is None:
            return HOST_IDS
        try:
            return self.id_blocks.claim(first)
        except ValueError as exc:  # the configured range changed meanwhile
            container.log.warning("its host ids are outside the configured blocks", error=str(exc))
            return IdMap(first, userns.BLOCK)

    def _take_ids(self, container: ContainerView) -> IdMap:
        """The container's ids: a block of its own unless it asks for the host's."""
        wanted = container.options.get("userns")
        if wanted is False or (wanted is None and not self.userns_default):
            return HOST_IDS
        if self.no_own_ids is not None:
            raise InvalidRequest(
                f'create: "userns": true: containers cannot have ids of their own here '
                f"({self.no_own_ids})"
            )
        try:
            return self.id_blocks.take()
        except LookupError as exc:
            raise LimitExceeded(f"create: userns: {exc}") from None

    @hookimpl
    def corral_container_info(self, container: ContainerView) -> dict[str, Any]:
        """``ids``: the host ids of the container's ids 0 on (``first``, ``count``), or
        ``"host"``."""
        first = container.plugin_state(NAME).get("ids")
        return {"ids": "host" if first is None else {"first": first, "count": userns.BLOCK}}

    def _fork_ahead(self) -> None:
        if self.zygote is not None:
            self.zygote.fork_ahead()

    @hookimpl
    def corral_container_launch(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[InitSandbox]:
        return self._launch(container, plan, restoring)

    @asynccontextmanager
    async def _launch(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[InitSandbox]:
        sandbox = await (_reconnect(container) if restoring else _start(container, plan))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sandbox.serve)
                launcher = None if restoring else container.stash[LAUNCH].launcher
                if launcher is not None and launcher.pid is not None:
                    # A spawned launcher exits once the init is ready: reap it (the
                    # zygote reaps those it forked; no task for them).
                    nursery.start_soon(launcher.wait)
                yield sandbox
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if not container.detaching:
                    await sandbox.kill()
                sandbox.close()

    @hookimpl
    def corral_shutdown(self) -> None:
        """Stop the zygote; running containers and launchers go on."""
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None

    @hookimpl
    def corral_startup(self, live_handles: frozenset[str]) -> None:
        """Kill the inits of this depot whose container the daemon does not know (a crash
        mid-create); have the first container's launcher forked ahead."""
        for pid, depot_dir in self._inits_of_depot():
            if depot_dir.name not in live_handles:
                log.warning("orphan container init killed", pid=pid, container_path=str(depot_dir))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._fork_ahead()

    def _inits_of_depot(self) -> list[tuple[int, Path]]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) >= 3 and argv[0] == str(self.init).encode() and argv[1] == b"launch":
                path = Path(os.fsdecode(argv[2]))
                if path.parent == self.depot:
                    found.append((int(entry.name), path))
        return found


async def _start(container: ContainerView, plan: LaunchPlan) -> InitSandbox:
    launcher, root, ids = container.stash[LAUNCH]
    if _root_plan(plan) != root:
        raise LaunchFailed(
            f"container {container.handle}: a plugin changed the root filesystem plan "
            "(root, root mount, host mounts) after the isolation plugin's preparation; "
            "later plugins may only add mounts"
        )
    try:
        pid = await launcher.finish(spec.render_rest(plan, ids).encode("utf-8", "surrogateescape"))
    except LaunchError as exc:
        message = str(exc)
        if IN_ROOT in message:  # the client's rootfs or bind mounts, not Corral
            detail = message.split(IN_ROOT, 1)[1]
            raise InvalidRequest(
                f"container {container.handle}: its root filesystem or bind mounts: {detail}"
            ) from None
        raise LaunchFailed(f"container {container.handle}: {message}") from None
    # Saved with the container's next record (active). A daemon that dies before
    # that kills the init at its start, found by its cmdline (corral_startup).
    state = container.plugin_state(NAME)
    state.update(pid=pid, start_time=process_start_time(pid))
    # The init is our child (the launcher's orphan: the daemon is a subreaper),
    # so its pid stays its own until we reap it.
    pidfd = os.pidfd_open(pid)
    sock = trio.socket.from_stdlib_socket(launcher.take_connection())
    return InitSandbox(container, pid, pidfd, sock, owned=True)


async def _reconnect(container: ContainerView) -> InitSandbox:
    state = container.plugin_state(NAME)
    pid = state.get("pid")
    if pid is None or process_start_time(pid) != state.get("start_time"):
        return InitSandbox(container, pid or 0, None, None)  # it never started, or it is gone
    pidfd = os.pidfd_open(pid)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await sock.connect(str(container.path / SOCKET_NAME))
    except OSError as exc:
        container.log.warning("cannot reach the container init", error=str(exc))
        sock.close()
        return InitSandbox(container, pid, pidfd, None)
    return InitSandbox(container, pid, pidfd, sock)
