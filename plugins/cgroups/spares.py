"""Container cgroups made ahead, and removed after destroy has replied, where they can be renamed.

A container's cgroups cost the daemon about half a millisecond to make on a v1
host (a directory per hierarchy, each set up) and nearly as much to remove. A
v1 hierarchy renames a cgroup within its parent, for less (here, seven renames
took 0.1 ms against 0.25 ms for the seven mkdirs alone); v2 renames nothing. So, in the hierarchies that can (:attr:`Backend.renames`),
the plugin keeps one *spare* set made ahead (``PARENT/.spare-N`` in each), which
create renames to the container's handle; and destroy renames the container's
to ``PARENT/.trash-N`` and removes them once it has replied
(:meth:`~supervisor.api.ContainerView.after_destroy`), then makes the next
spare set in the same worker thread. The names start with a dot, which no
handle does; the daemon's start removes any left by a daemon that died (as it
removes every cgroup of no container).
"""

from __future__ import annotations

import itertools
from collections import deque

import structlog

from plugins.cgroups.backend import CgroupError
from plugins.cgroups.group import ContainerCgroups
from plugins.cgroups.layout import Layout

#: Spare sets kept: one per destroy is made again, so one is enough for create,
#: run, destroy in a loop; a burst of creates makes the rest as before.
MAX_SPARES = 1

log = structlog.get_logger()


class Spares:
    """The spare sets of one daemon's parent cgroup; used from the event loop and worker threads."""

    def __init__(self, layout: Layout, parent: str) -> None:
        self.layout = layout
        self.parent = parent
        self._ready: deque[str] = deque()  # append and popleft are atomic
        self._numbers = itertools.count()

    def take(self) -> str | None:
        """The name of a spare set for a new container to rename (None: none is ready)."""
        try:
            return self._ready.popleft()
        except IndexError:
            return None

    def trash_name(self) -> str:
        """A name no cgroup of the parent has, for a destroyed container's cgroups."""
        return f".trash-{next(self._numbers)}"

    def make(self) -> None:
        """Make a spare set if fewer than :data:`MAX_SPARES` are ready (blocking; never raises)."""
        if len(self._ready) >= MAX_SPARES:
            return
        name = f".spare-{next(self._numbers)}"
        group = ContainerCgroups.plan(self.layout, self.parent, name).renamable()
        if not group.directories():
            return  # nothing here can be renamed: create makes every directory
        try:
            group.create()
        except (CgroupError, OSError) as exc:
            log.warning("spare cgroups not made", error=str(exc))
            group.remove_now()
            return
        self._ready.append(name)

    def clear(self) -> None:
        """Remove the spare sets (daemon shutdown: the parent may then go too)."""
        while (name := self.take()) is not None:
            ContainerCgroups.plan(self.layout, self.parent, name).renamable().remove_now()
