"""cgroups plugin: each container's cgroups, its limits, stats and OOM watcher.

Every container gets its own cgroup, ``PARENT/HANDLE``, in each hierarchy that
holds a controller Corral uses (:mod:`~plugins.cgroups.layout` finds them at
start, cgroup v1, v2 or a mix), and in every other mounted hierarchy (v1
``blkio``, ``name=systemd``, a hybrid host's v2 tree: *bare*, nothing is set
there), so that no process of a container stays in the daemon's cgroup of any
hierarchy. The launcher then gives the container a cgroup namespace of its own,
rooted at those cgroups; on v2 the running init is then moved to a leaf,
``HANDLE/init``, so that its jobs' cgroups can have memory (:mod:`~plugins.cgroups.jobs`).
The directories are made and configured in
``corral_container_prepare``, before the container's launcher joins them through
the launch plan's membership files (``cgroup.procs``; v1 ``tasks``, see
:attr:`~plugins.cgroups.v1.V1.join_file`), so every process of the container is
accounted and limited from its first instruction. They are removed when the
container is destroyed, when its creation fails, and at start for handles the
daemon no longer knows. Where a hierarchy renames cgroups (v1), a set made ahead
is renamed at create, and destroy renames the container's away and removes them
after its reply (:mod:`~plugins.cgroups.spares`).

Limits (``mem``, ``cpu``, ``cpus``, ``cpuset``, ``pids``; see
:mod:`~plugins.cgroups.limits`) come from the create option ``limits`` and the
``limit`` command. The OOM watcher (:mod:`~plugins.cgroups.oom`) runs for the
container's whole life in the prepare context and publishes
:class:`~supervisor.api.OutOfMemory`; the core then records the event and
stops the container. Stopping with KILL freezes the cgroup first, so no process
escapes by forking.

The create option ``memory_pressure`` (``"low"``, ``"medium"``, ``"critical"``, a
PSI threshold ``{"psi": "some 150000 1000000"}`` on cgroup v2, or a list of them)
starts the memory pressure watcher (:mod:`~plugins.cgroups.pressure`) beside the
OOM watcher: v1 vmpressure levels through ``cgroup.event_control``, v2 PSI
triggers on ``memory.pressure`` (each named level is a trigger: ``low`` some
0.1%, ``medium`` some 5%, ``critical`` full 10% of a 1 s window). Each
notification is published as :class:`~supervisor.api.MemoryPressure`, at most
one per level per second; ``info`` shows ``memory_pressure``, what the kernel
was given for each level.

Config ``[cgroups]``: ``parent`` (default ``"corral"``), the cgroup under each
hierarchy root holding the containers' cgroups. It belongs to one daemon: the
daemon removes any cgroup in it that is not one of its containers, creates it
when needed and removes it when it stops with no container left (put host-wide
caps on a level above, e.g. ``parent = "capped/corral"``).
``default_pids_limit`` (default 4096; ``0`` or ``false``: none) is the ``pids``
limit of a container created without one: a container must not be able to
fork-bomb the host unless a client asked for that many tasks.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
import trio

from plugins.cgroups import layout as layout_module
from plugins.cgroups import oom, pressure
from plugins.cgroups.backend import CPUSET, FREEZE_TIMEOUT, MEMORY, PIDS, CgroupError
from plugins.cgroups.counters import FdBudget
from plugins.cgroups.group import ContainerCgroups
from plugins.cgroups.jobs import JobCgroup
from plugins.cgroups.layout import Layout
from plugins.cgroups.limits import RESOURCES, CgroupLimit, apply_all, host_cores, read_all
from plugins.cgroups.spares import Spares
from plugins.cgroups.values import MAX_PIDS, parse_limits
from supervisor.api import (
    ContainerView,
    InvalidRequest,
    InvalidState,
    LaunchPlan,
    Limit,
    MemoryPressure,
    OutOfMemory,
    StashKey,
    context_nursery,
    hookimpl,
    setting,
)

NAME = "cgroups"
_PARENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")

log = structlog.get_logger().bind(plugin=NAME)

#: Containers whose counters are read between two checkpoints of the event loop (about
#: 50 us each).
STATS_BATCH = 20

#: The cgroups of a container, while its prepare context is open.
GROUP = StashKey[ContainerCgroups]()
#: What the kernel was given for each memory pressure level watched (for ``info``).
PRESSURE = StashKey[dict[str, str]]()


def _parent(value: Any) -> str:
    if not isinstance(value, str) or not _PARENT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a relative cgroup path of letters, digits, "
            "'_', '.' and '-' (e.g. \"corral\" or \"capped/corral\")"
        )
    return value


def _pids_limit(value: Any) -> int:
    """Tasks, ``0`` or ``false`` for no default limit (TOML has no null)."""
    if value is False:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PIDS:
        raise ValueError(f"must be a number of tasks from 0 to {MAX_PIDS} or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """``[cgroups]``."""

    parent: str = setting(
        "corral",
        "cgroup under each hierarchy root holding the containers' cgroups, owned by one daemon",
        check=_parent,
    )
    default_pids_limit: int = setting(
        4096,
        "pids limit of a container created without one (0 or false: none)",
        check=_pids_limit,
    )


def _find(container: ContainerView) -> ContainerCgroups | None:
    return container.stash.get(GROUP, None)


def _record(container: ContainerView, name: str, value: Any) -> None:
    container.plugin_state(NAME).setdefault("limits", {})[name] = value
    container.save()


def _recorded(container: ContainerView, name: str) -> Any:
    return container.plugin_state(NAME).get("limits", {}).get(name)


class CgroupsPlugin:
    """The built-in ``cgroups`` plugin (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        """Find where each controller lives."""
        self.parent = settings.parent
        self.default_pids = settings.default_pids_limit
        self.layout: Layout = layout_module.detect()
        self.spares = Spares(self.layout, self.parent)
        #: The counter files the containers' cgroups may keep open for the metrics.
        self.counter_files = FdBudget()
        memory = self.layout.placements.get(MEMORY)
        self.pressure = pressure.Support.detect(memory.version if memory else None)
        if self.layout.placements:
            log.info("cgroup controllers found", parent=self.parent, **self.layout.describe())
        else:
            log.warning("no cgroup controller found: containers will run without limits")

    # -- daemon ------------------------------------------------------------------------

    @hookimpl
    def corral_startup(self, live_handles: frozenset[str]) -> Awaitable[None]:
        """Set up the parent cgroups and remove those of containers the daemon does not know."""
        return self._startup(live_handles)

    async def _startup(self, live_handles: frozenset[str]) -> None:
        try:
            setup_parents(self.layout, self.parent)
        except CgroupError as exc:
            log.error("cannot set up the parent cgroups", error=exc.message)
        stale: set[str] = set()
        for root in self.layout.hierarchies():
            parent = root / self.parent
            if parent.is_dir():
                stale.update(
                    e.name for e in parent.iterdir() if e.is_dir() and e.name not in live_handles
                )
        for handle in sorted(stale):
            if not handle.startswith("."):  # spare and trash sets of a daemon that died go quietly
                log.warning("cgroups of an unknown container removed", handle=handle)
            await ContainerCgroups.plan(self.layout, self.parent, handle).remove()
        self.spares.make()

    @hookimpl
    def corral_shutdown(self) -> None:
        """Remove the parent cgroups if no container is left in them (containers outlive the daemon)."""
        self.spares.clear()
        for root in self.layout.hierarchies():
            try:
                (root / self.parent).rmdir()
            except OSError:
                pass  # containers live on in it, or it is gone already

    # -- create options and limits --------------------------------------------------------

    def _limits_option(self, value: Any) -> dict[str, Any]:
        available = {name for name, r in RESOURCES.items() if self.layout.has(r.controller)}
        cpuset = self.layout.placements.get(CPUSET)
        host = host_cores(
            cpuset.backend if cpuset else None, cpuset.root / self.parent if cpuset else None
        )
        return parse_limits(value, host, available)

    def _pressure_option(self, value: Any) -> list[str]:
        return pressure.parse_option(value, self.pressure)

    @hookimpl
    def corral_create_options(self) -> dict[str, Any]:
        """Claim ``limits`` and ``memory_pressure``: checked completely here, so a bad value
        fails create before anything is built."""
        return {"limits": self._limits_option, pressure.OPTION: self._pressure_option}

    @hookimpl
    def corral_limit_resources(self) -> dict[str, Limit]:
        """``mem``, ``cpu``, ``cpus``, ``cpuset`` and ``pids``, read and written in the cgroups."""
        return {name: CgroupLimit(r, _find, _record, _recorded) for name, r in RESOURCES.items()}

    # -- per container -----------------------------------------------------------------------

    @hookimpl
    def corral_container_prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[None]:
        """The container's cgroups, its limits and its OOM watcher, for the container's life."""
        return self._cgroups(container, plan, restoring)

    @asynccontextmanager
    async def _cgroups(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AsyncIterator[None]:
        state = container.plugin_state(NAME)
        if restoring and "dirs" in state:
            group = ContainerCgroups.from_state(container.handle, state["dirs"])
        else:
            # Restoring without a record: the daemon died before it saved one; the
            # directories, if any, are where this layout puts them.
            group = ContainerCgroups.plan(self.layout, self.parent, container.handle)
        if not restoring:
            # Saved with the container's next record. A daemon that dies before that
            # finds the directories where the layout puts them (above) at its start.
            state["dirs"] = group.to_state()
        try:
            async with context_nursery() as nursery:
                if not restoring:
                    await self._create(container, group)
                if group.has(MEMORY):
                    # Registered now, before the first limit is written, so that no OOM goes
                    # unseen; watched in a task of its own (a nursery.start, which waits for
                    # the task to run, cost the create a pass of the scheduler).
                    try:
                        registration = oom.register(group.backend(MEMORY), group.path(MEMORY))
                    except FileNotFoundError:
                        pass  # restoring a container whose cgroups are gone: nothing to watch
                    else:
                        nursery.start_soon(
                            partial(
                                oom.watch,
                                group.backend(MEMORY),
                                group.path(MEMORY),
                                state.get("oom_kills", 0),
                                lambda count: _out_of_memory(container, count),
                                registration,
                                count=group.oom_kills,  # v1: the jobs' kills too
                            )
                        )
                    # Registered before the first limit too, and watched the same way.
                    levels = container.options.get(pressure.OPTION)
                    if levels:
                        self._watch_pressure(container, group, levels, nursery, restoring)
                if not restoring:
                    default_pids = self.default_pids if self.layout.has(PIDS) else 0
                    await _apply_create_limits(container, group, default_pids)
                plan.cgroup_procs.extend(group.procs_files())
                container.stash[GROUP] = group
                try:
                    yield
                finally:
                    group.close_counters()
                    container.stash.pop(GROUP, None)
                    container.stash.pop(PRESSURE, None)
                    nursery.cancel_scope.cancel()
        finally:
            if not container.detaching:
                trash = group.to_trash(self.spares.trash_name())
                with trio.CancelScope(shield=True):
                    await group.remove()  # what could not be renamed
                container.after_destroy(partial(self._remove_trash, trash))

    def _watch_pressure(
        self,
        container: ContainerView,
        group: ContainerCgroups,
        levels: list[str],
        nursery: trio.Nursery,
        restoring: bool,
    ) -> None:
        path = group.path(MEMORY)
        try:
            registration = pressure.register(
                group.backend(MEMORY), path, levels, self.pressure.privileged
            )
        except FileNotFoundError:
            return  # restoring a container whose cgroups are gone: nothing to watch
        except InvalidRequest as exc:
            if restoring:
                # Accepted by an earlier daemon (one with CAP_SYS_RESOURCE, say): the
                # container lives on, unwatched.
                container.log.error("memory pressure no longer watched", error=exc.message)
                return
            raise InvalidRequest(f"container {container.handle}: {exc.message}") from None
        container.stash[PRESSURE] = registration.kernel
        container.log.debug("memory pressure watched", levels=registration.kernel)
        nursery.start_soon(
            pressure.watch, path, lambda level: _memory_pressure(container, level), registration
        )

    def _remove_trash(self, trash: ContainerCgroups) -> None:
        """After destroy's reply: remove a container's renamed cgroups, and make the next spares."""
        trash.remove_now()
        self.spares.make()

    async def _create(self, container: ContainerView, group: ContainerCgroups) -> None:
        # On the event loop: cgroupfs is kernel memory, its ~20 calls here take about
        # half a millisecond, less than a round trip to a worker thread.
        # The parents are set up at start; again only if an administrator removed one.
        if not all(path.parent.is_dir() for path in group.directories()):
            setup_parents(self.layout, self.parent)
        try:
            group.create(spare=self.spares.take())
        except FileExistsError:
            # Only a crashed daemon leaves a directory named after a free handle (and
            # what of the spare set was not renamed yet, removed at the next start).
            container.log.warning("leftover cgroups of the same handle removed")
            await group.remove()
            group.create()

    @hookimpl
    def corral_container_attach(
        self, container: ContainerView, restoring: bool
    ) -> AbstractAsyncContextManager[None] | None:
        """cgroup v2: move a new container's init into a leaf, so that its jobs' cgroups
        measure memory (:meth:`~plugins.cgroups.group.ContainerCgroups.nest_init`)."""
        group = _find(container)
        if restoring or group is None or container.sandbox is None or not group.nests_init:
            return None
        return _nest_init(container, group, container.sandbox.pid)

    @hookimpl
    def corral_container_info(self, container: ContainerView) -> dict[str, Any] | None:
        """``limits`` in force and ``memory_stat``, ``cpu_stat``, ``pids``, read from the cgroups now."""
        group = _find(container)
        if group is None:
            return None
        info = group.stats()
        info["limits"] = read_all(group, container.plugin_state(NAME).get("limits", {}))
        watched = container.stash.get(PRESSURE, None)
        if watched is not None:
            info[pressure.OPTION] = dict(watched)
        return info

    @hookimpl
    def corral_containers_stats(
        self, containers: Sequence[ContainerView]
    ) -> Awaitable[dict[str, dict[str, Any]]]:
        """``memory_stat``, ``cpu_stat`` and ``pids`` as ``info`` has them, read through files
        kept open (see :mod:`plugins.cgroups.counters`), but for the memory and task
        limits: those the plugin recorded when it set them, not read again."""
        return _stats(containers, self.counter_files)

    @hookimpl
    def corral_container_freeze(
        self, container: ContainerView, frozen: bool
    ) -> Awaitable[None] | None:
        """Freeze or thaw the container's cgroup (v1 ``freezer``, v2 ``cgroup.freeze``)."""
        group = _find(container)
        if group is None or not group.can_freeze:
            return None
        return _freeze(container, group) if frozen else _thaw(group)

    @hookimpl
    def corral_job_group(
        self, container: ContainerView, job_id: int, create: bool
    ) -> JobCgroup | None:
        """The job's own cgroups (:mod:`~plugins.cgroups.jobs`), for its limits and usage."""
        group = _find(container)
        if group is None:
            return None
        try:
            return JobCgroup.make(group, job_id, create)
        except CgroupError as exc:
            raise InvalidState(
                f"container {container.handle}: job {job_id}: {exc.message}"
            ) from None

    @hookimpl
    def corral_container_kill(self, container: ContainerView) -> Awaitable[None] | None:
        """Freeze the container, SIGKILL all but its init, thaw."""
        group = _find(container)
        if group is None:
            return None
        keep = container.sandbox.pid if container.sandbox is not None else None
        return _kill(container, group, keep)


def setup_parents(layout: Layout, parent: str) -> None:
    """Create ``PARENT`` (and the levels above it) in each hierarchy, ready for containers.

    Every level from the hierarchy root down is set up (v1 cpuset copies, v2
    enables the controllers in ``cgroup.subtree_control``); done at start and
    again at a create that finds a parent gone (an administrator removed it).
    """
    parts = parent.split("/")
    for root, placement in layout.hierarchies().items():
        controllers = [c for c, p in layout.placements.items() if p.root == root]
        levels = [root] + [root.joinpath(*parts[: i + 1]) for i in range(len(parts))]
        for level in levels:
            try:
                level.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {level}: {exc.strerror}") from None
            for controller in controllers:
                placement.backend.setup_parent(controller, level)
        for controller in controllers:
            placement.backend.setup_containers_parent(controller, levels[-1])


async def _apply_create_limits(
    container: ContainerView, group: ContainerCgroups, default_pids: int
) -> None:
    """The create option ``limits``, with *default_pids* (0: none) when it has no ``pids``."""
    limits = dict(container.options.get("limits") or {})
    if not limits:
        if default_pids:
            # One small write, done on the event loop (no reclaim to wait for, unlike mem),
            # and recorded with the container's record as it becomes active.
            container.plugin_state(NAME)["limits"] = apply_all(group, {"pids": default_pids})
        return
    if default_pids:
        limits.setdefault("pids", default_pids)
    try:
        in_force = await trio.to_thread.run_sync(apply_all, group, limits)
    except InvalidRequest as exc:
        raise InvalidRequest(f"container {container.handle}: {exc.message}") from None
    container.plugin_state(NAME)["limits"] = in_force
    container.save()
    container.log.info("limits set", **in_force)


@asynccontextmanager
async def _nest_init(
    container: ContainerView, group: ContainerCgroups, pid: int
) -> AsyncIterator[None]:
    try:
        # In a worker thread: moving a process takes the kernel's threadgroup lock for
        # writing, which waits for an RCU grace period (7-17 ms on the development VM's
        # v2 tree), once per create on v2.
        await trio.to_thread.run_sync(group.nest_init, pid)
    except CgroupError as exc:
        # The container runs all the same; its jobs' peak memory is None.
        container.log.warning("jobs' memory cgroups not enabled", error=exc.message)
    yield


async def _out_of_memory(container: ContainerView, count: int) -> None:
    container.plugin_state(NAME)["oom_kills"] = count
    container.save()
    container.log.warning("the kernel OOM-killed a process of the container", oom_kills=count)
    await container.publish(OutOfMemory(container.handle))


async def _memory_pressure(container: ContainerView, level: str) -> None:
    container.log.info("the kernel reported memory pressure", level=level)
    await container.publish(MemoryPressure(container.handle, level))


async def _stats(
    containers: Sequence[ContainerView], budget: FdBudget
) -> dict[str, dict[str, Any]]:
    out = {}
    for i, container in enumerate(containers):
        if i % STATS_BATCH == STATS_BATCH - 1:
            await trio.lowlevel.checkpoint()  # other requests go through in between
        group = _find(container)
        if group is not None:
            recorded = container.plugin_state(NAME).get("limits", {})
            out[container.handle] = group.counters(budget, recorded)
    return out


async def _freeze(container: ContainerView, group: ContainerCgroups) -> None:
    if not await group.freeze():
        group.thaw()
        raise InvalidState(
            f"container {container.handle}: its processes did not freeze within {FREEZE_TIMEOUT} s"
        )


async def _thaw(group: ContainerCgroups) -> None:
    group.thaw()


async def _kill(container: ContainerView, group: ContainerCgroups, keep: int | None) -> None:
    killed = await group.kill_all_but(keep)
    container.log.debug("container processes killed", count=killed)
