"""The resources of the ``limit`` command and of the create option ``limits``.

Each :class:`Resource` ties a client-facing name (``mem``, ``cpus``...) to its
controller, its parser (:mod:`plugins.cgroups.values`) and the backend calls
that write and read it. Values are always read back from the cgroup files, so
``limit`` reports what the kernel enforces, also after a daemon restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from plugins.cgroups import values
from plugins.cgroups.backend import CPU, CPUSET, MEMORY, PIDS, Backend, read
from plugins.cgroups.group import ContainerCgroups
from plugins.cgroups.values import Host
from supervisor.api import ContainerView, InvalidRequest, InvalidState

ONLINE_CPUS = Path("/sys/devices/system/cpu/online")


@dataclass(frozen=True)
class Resource:
    """One limit: how to check, write and read it."""

    name: str
    controller: str
    parse: Callable[[Any, Host], Any]
    apply: Callable[[Backend, Path, Any], None]
    #: ``read(backend, path, recorded)``; *recorded* is the value last written, if any.
    read: Callable[[Backend, Path, Any], Any]


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        # cpuset first: on v1 the cores must be settled before anything else runs there.
        Resource(
            "cpuset",
            CPUSET,
            values.parse_cpuset,
            lambda b, p, v: b.set_cpuset(p, v),
            lambda b, p, _: b.cpuset(p),
        ),
        Resource(
            "mem",
            MEMORY,
            values.parse_mem,
            lambda b, p, v: b.set_memory(p, v),
            lambda b, p, _: b.memory_limit(p),
        ),
        Resource(
            "cpu",
            CPU,
            values.parse_cpu,
            lambda b, p, v: b.set_cpu_shares(p, v),
            lambda b, p, recorded: b.cpu_shares(p, recorded),
        ),
        Resource(
            "cpus",
            CPU,
            values.parse_cpus,
            lambda b, p, v: b.set_cpu_quota(p, v),
            lambda b, p, _: b.cpu_quota(p),
        ),
        Resource(
            "pids",
            PIDS,
            values.parse_pids,
            lambda b, p, v: b.set_pids_max(p, v),
            lambda b, p, _: b.pids_max(p),
        ),
    )
}
assert list(RESOURCES) == list(values.PARSERS)


def host_cores(backend: Backend | None, parent: Path | None) -> Host:
    """The cores a child of *parent* (a cpuset cgroup directory) may be given.

    Without a cpuset controller, the host's online CPUs.
    """
    if backend is not None and parent is not None:
        try:
            return Host(values.cpuset_cores(backend.available_cores(parent)))
        except (OSError, ValueError):
            pass
    try:
        return Host(values.cpuset_cores(read(ONLINE_CPUS)))
    except (OSError, ValueError):
        return Host(frozenset(range(os.cpu_count() or 1)))


def container_host(group: ContainerCgroups) -> Host:
    """:func:`host_cores` for a container's cpuset parent."""
    if group.has(CPUSET):
        return host_cores(group.backend(CPUSET), group.path(CPUSET).parent)
    return host_cores(None, None)


def apply_all(group: ContainerCgroups, limits: dict[str, Any]) -> dict[str, Any]:
    """Write the (already parsed) limits of the create CONFIG; return the values in force."""
    in_force: dict[str, Any] = {}
    for name, resource in RESOURCES.items():
        if name in limits:
            backend, path = group.backend(resource.controller), group.path(resource.controller)
            resource.apply(backend, path, limits[name])
            in_force[name] = resource.read(backend, path, limits[name])
    return in_force


def read_all(group: ContainerCgroups, recorded: dict[str, Any]) -> dict[str, Any]:
    """Every limit the container's cgroups can hold, as in force now (None: unlimited)."""
    out: dict[str, Any] = {}
    for name, resource in RESOURCES.items():
        if group.has(resource.controller):
            try:
                out[name] = resource.read(
                    group.backend(resource.controller),
                    group.path(resource.controller),
                    recorded.get(name),
                )
            except (OSError, ValueError):
                out[name] = None  # a half-restored container: report what can be read
    return out


class CgroupLimit:
    """A :class:`~supervisor.api.Limit` of the ``limit`` command backed by a cgroup file."""

    def __init__(
        self,
        resource: Resource,
        find: Callable[[ContainerView], ContainerCgroups | None],
        record: Callable[[ContainerView, str, Any], None],
        recorded: Callable[[ContainerView, str], Any],
    ) -> None:
        """
        Args:
            resource: the limit.
            find: the live cgroups of a container (None if it has none).
            record: persists the value in force for a container.
            recorded: the value last persisted for a container.
        """
        self.resource = resource
        self._find = find
        self._record = record
        self._recorded = recorded

    def _where(self, container: ContainerView) -> tuple[ContainerCgroups, Backend, Path]:
        group = self._find(container)
        if group is None:
            raise InvalidState(f"container {container.handle}: has no cgroups")
        controller = self.resource.controller
        if not group.has(controller):
            raise InvalidRequest(
                f"container {container.handle}: {self.resource.name} cannot be limited "
                f"on this host (no {controller} controller)"
            )
        return group, group.backend(controller), group.path(controller)

    async def read(self, container: ContainerView) -> Any:
        """The value in force, read from the cgroup."""
        _, backend, path = self._where(container)
        return self.resource.read(backend, path, self._recorded(container, self.resource.name))

    async def write(self, container: ContainerView, value: Any) -> Any:
        """Check *value*, write it, and return the value in force as read back."""
        group, backend, path = self._where(container)
        try:
            parsed = self.resource.parse(value, container_host(group))
            async with group.lock:
                # Lowering a memory limit makes the kernel reclaim: keep that off the event loop.
                await trio.to_thread.run_sync(self.resource.apply, backend, path, parsed)
                in_force = self.resource.read(backend, path, parsed)
                self._record(container, self.resource.name, in_force)
        except InvalidRequest as exc:
            raise InvalidRequest(f"container {container.handle}: {exc.message}") from None
        container.log.info("limit set", resource=self.resource.name, value=in_force)
        return in_force
