"""One container's cgroups: a directory in each hierarchy, and what is done to all of them.

On v1 a container has one directory per hierarchy (``memory/corral/HANDLE``,
``cpu/corral/HANDLE``...), on v2 one in the unified tree; a hybrid host may
have both. Each controller is reached through the backend of its version.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
import trio

from plugins.cgroups.backend import (
    CPUACCT,
    FREEZE_POLL,
    FREEZE_TIMEOUT,
    FREEZER,
    MEMORY,
    PIDS,
    Backend,
    CgroupError,
    procs,
    write,
)
from plugins.cgroups.counters import FdBudget, OpenCounters
from plugins.cgroups.layout import BACKENDS, Layout

#: How long destroy keeps killing stragglers before it gives up on a directory.
REMOVE_TIMEOUT = 10.0
REMOVE_POLL = 0.02
#: cgroup v2: the leaf of a container's cgroup its init is moved to (see
#: :meth:`ContainerCgroups.nest_init`).
INIT_LEAF = "init"

log = structlog.get_logger()


class ContainerCgroups:
    """The cgroup directories of one container, by controller."""

    def __init__(self, handle: str, dirs: dict[str, tuple[int, Path]]) -> None:
        """
        Args:
            handle: the container's handle (for messages).
            dirs: controller -> (cgroup version, the container's directory for it).
        """
        self.handle = handle
        self._dirs = {c: (BACKENDS[version], Path(path)) for c, (version, path) in dirs.items()}
        #: Serializes limit writes: two memory writes interleaved could break memsw >= mem.
        self.lock = trio.Lock()
        self._counters: OpenCounters | None = None
        #: v1: the OOM kills in the jobs' memory cgroups, as last counted (:meth:`oom_kills`).
        self._job_oom_kills = 0

    @classmethod
    def plan(cls, layout: Layout, parent: str, handle: str) -> ContainerCgroups:
        """Where the container's directories go: ``ROOT/PARENT/HANDLE`` in each hierarchy."""
        return cls(
            handle,
            {c: (p.version, p.root / parent / handle) for c, p in layout.placements.items()},
        )

    def to_state(self) -> dict[str, list[Any]]:
        """JSON form for the container's plugin state."""
        return {c: [backend.version, str(path)] for c, (backend, path) in self._dirs.items()}

    @classmethod
    def from_state(cls, handle: str, state: dict[str, list[Any]]) -> ContainerCgroups:
        """The inverse of :meth:`to_state`."""
        return cls(handle, {c: (int(v), Path(p)) for c, (v, p) in state.items()})

    # -- lookup ------------------------------------------------------------------------

    def has(self, controller: str) -> bool:
        """Whether the container has a cgroup for *controller*."""
        return controller in self._dirs

    def backend(self, controller: str) -> Backend:
        return self._dirs[controller][0]

    def path(self, controller: str) -> Path:
        return self._dirs[controller][1]

    def directories(self) -> dict[Path, tuple[Backend, list[str]]]:
        """Each distinct directory with its backend and the controllers it serves."""
        found: dict[Path, tuple[Backend, list[str]]] = {}
        for controller, (backend, path) in self._dirs.items():
            found.setdefault(path, (backend, []))[1].append(controller)
        return found

    def renamable(self) -> ContainerCgroups:
        """The same cgroups in the hierarchies that can rename one (v1) only."""
        kept = {c: (b.version, p) for c, (b, p) in self._dirs.items() if b.renames}
        return ContainerCgroups(self.handle, kept)

    def procs_files(self) -> list[Path]:
        """The files the container's launcher joins by (see ``Backend.join_file``)."""
        return [path / backend.join_file for path, (backend, _) in self.directories().items()]

    @property
    def nests_init(self) -> bool:
        """Whether the init goes to a leaf of its own: memory on v2 (see :meth:`nest_init`)."""
        return self.has(MEMORY) and self.backend(MEMORY).version == 2

    def nest_init(self, pid: int) -> None:
        """cgroup v2: move the running init (*pid*) into the leaf :data:`INIT_LEAF` and
        enable ``memory`` for the container's children, which the no-internal-processes
        rule allows only once no process is in the container's cgroup itself: each job's
        cgroup then has its own ``memory.peak`` (:mod:`plugins.cgroups.jobs`). Done after
        the launch: the init made its cgroup namespace in the container's cgroup, which
        stays the namespace's root (jobs see ``/job-N``, the init ``/init``).

        Raises:
            CgroupError: the kernel refused (the init is gone, another process is there).
        """
        path = self.path(MEMORY)
        leaf = path / INIT_LEAF
        try:
            leaf.mkdir(exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {leaf}: {exc.strerror}") from None
        write(leaf / "cgroup.procs", str(pid))
        write(path / "cgroup.subtree_control", f"+{MEMORY}")

    # -- life --------------------------------------------------------------------------

    def create(self, spare: str | None = None) -> None:
        """Make and configure every directory, before any task joins; where a
        hierarchy renames, rename the *spare* set's directory instead (see
        :mod:`plugins.cgroups.spares`) if it is there.

        Raises:
            FileExistsError: a directory is already there (a leftover).
            CgroupError: the kernel refused a directory or a setting.
        """
        for path, (backend, controllers) in self.directories().items():
            if spare is not None and backend.renames:
                try:
                    os.rename(path.parent / spare, path)
                    continue
                except FileExistsError:
                    raise  # a leftover, as below
                except OSError:
                    pass  # gone with its parent (an administrator removed it): make one
            try:
                path.mkdir()
            except FileExistsError:
                raise  # the caller removes the leftover and tries again
            except OSError as exc:
                raise CgroupError(
                    f"container {self.handle}: cannot create cgroup {path}: {exc.strerror}"
                ) from None
            for controller in controllers:
                backend.setup_child(controller, path)

    def to_trash(self, name: str) -> ContainerCgroups:
        """Rename the directories of the hierarchies that rename to *name*, for
        :meth:`remove_now` once destroy has replied: those renamed, which this group
        no longer holds (:meth:`remove` takes the others where they are)."""
        moved: dict[str, tuple[Backend, Path]] = {}
        for path, (backend, controllers) in self.directories().items():
            if not backend.renames:
                continue
            try:
                os.rename(path, path.parent / name)
            except OSError:
                continue  # gone, or refused
            moved.update((c, (backend, path.parent / name)) for c in controllers)
        self._dirs = {c: entry for c, entry in self._dirs.items() if c not in moved}
        return ContainerCgroups(self.handle, {c: (b.version, p) for c, (b, p) in moved.items()})

    def remove_now(self) -> list[Path]:
        """:meth:`remove`, blocking (for a worker thread)."""
        left = [path for path in self.directories() if path.exists()]
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while left and time.monotonic() < deadline:
            left = [path for path in left if not self._rmdir(path)]
            if left:
                self._kill_leftovers()
                time.sleep(REMOVE_POLL)
        self._report_left(left)
        return left

    async def remove(self) -> list[Path]:
        """Kill whatever is left in the cgroups and remove them all; tolerates missing ones.

        Returns:
            the directories that could not be removed in :data:`REMOVE_TIMEOUT`.
        """
        left = [path for path in self.directories() if path.exists()]
        with trio.move_on_after(REMOVE_TIMEOUT):
            while left:
                left = [path for path in left if not self._rmdir(path)]
                if left:
                    self._kill_leftovers()
                    await trio.sleep(REMOVE_POLL)
        self._report_left(left)
        return left

    def _report_left(self, left: list[Path]) -> None:
        for path in left:
            log.error("cgroup not removed: tasks remain", handle=self.handle, path=str(path))

    def _rmdir(self, path: Path) -> bool:
        try:
            return _rmdir_tree(path)
        except CgroupError as exc:
            log.error("cgroup not removed", handle=self.handle, error=exc.message)
            return True  # nothing a retry would change

    def _kill_leftovers(self) -> None:
        if self.has(FREEZER) and self.path(FREEZER).exists():
            try:
                # A freeze cut short (daemon killed mid-stop) would keep SIGKILL from landing.
                self.backend(FREEZER).thaw(self.path(FREEZER))
            except (CgroupError, OSError):
                pass
        for path, (backend, _) in self.directories().items():
            if path.exists() and not backend.kill_all(path):
                _kill(_procs_tree(path), keep=None)

    # -- stop --------------------------------------------------------------------------

    def pids(self) -> set[int]:
        """Every process of the container, in any of its cgroups and their jobs' (children)."""
        found: set[int] = set()
        for path in self.directories():
            found.update(_procs_tree(path))
        return found

    @property
    def can_freeze(self) -> bool:
        """Whether the container has a freezer (v1 ``freezer``, v2 ``cgroup.freeze``)."""
        return self.has(FREEZER) and self.path(FREEZER).exists()

    async def freeze(self) -> bool:
        """Stop every process of the container; False if it did not settle in time.

        Raises:
            CgroupError: the freezer refused.
        """
        backend, freezer = self.backend(FREEZER), self.path(FREEZER)
        backend.start_freeze(freezer)
        try:
            with trio.move_on_after(FREEZE_TIMEOUT):
                while not backend.frozen(freezer):
                    await trio.sleep(FREEZE_POLL)
                return True
            return False
        except BaseException:
            self.thaw()  # a freeze nobody waits for any more must not stay
            raise

    def thaw(self) -> None:
        """Let every process of the container run again."""
        self.backend(FREEZER).thaw(self.path(FREEZER))

    async def kill_all_but(self, keep: int | None) -> int:
        """SIGKILL every process but *keep* (the init), frozen so that none escapes by forking.

        A frozen task cannot fork nor exit, so its pid cannot be reused between
        reading ``cgroup.procs`` and the ``kill``. The kill lands when the cgroup
        is thawed (v1) or at once (v2).

        Returns:
            how many processes were signalled.
        """
        frozen = False
        if self.can_freeze:
            try:
                settled = await self.freeze()
            except (CgroupError, OSError) as exc:
                log.warning(
                    "cannot freeze the cgroup; killing unfrozen", handle=self.handle, error=str(exc)
                )
            else:
                frozen = True
                if not settled:
                    log.warning("cgroup did not freeze in time; killing anyway", handle=self.handle)
        try:
            return _kill(self.pids(), keep)
        finally:
            if frozen:
                self.thaw()

    # -- stats -------------------------------------------------------------------------

    def oom_kills(self) -> int:
        """How many processes of the container the kernel OOM-killed, its jobs' included.

        v2 counts a kill in the victim's cgroup and each of its ancestors. v1 counts it
        only in the victim's own memory cgroup (``memcg_memory_event`` in
        mm/memcontrol.c stops there off the default hierarchy), so the kills in the jobs'
        memory cgroups are added to the container's own; a job's that saw one is kept
        while the container lives (:meth:`plugins.cgroups.jobs.JobCgroup.remove`).

        Raises:
            FileNotFoundError: the container's memory cgroup is gone.
        """
        return self.backend(MEMORY).oom_kills(self.path(MEMORY)) + self._count_job_oom_kills()

    def _count_job_oom_kills(self) -> int:
        backend, path = self._dirs[MEMORY]
        if backend.version != 1:
            return 0  # counted in the container's own already
        count = 0
        for child in _children(path):
            try:
                count += backend.oom_kills(child)
            except FileNotFoundError:
                pass  # a job's, removed meanwhile: it saw no kill (or it would be kept)
        self._job_oom_kills = count
        return count

    def stats(self) -> dict[str, Any]:
        """``memory_stat``, ``cpu_stat`` and ``pids`` for ``info``, read from the cgroups now."""
        out: dict[str, Any] = {}
        if self.has(MEMORY):
            try:
                m = self.backend(MEMORY).memory_stat(self.path(MEMORY))
                out["memory_stat"] = {
                    **m.details,
                    "usage": m.usage,
                    "max_usage": m.max_usage,
                    "limit": m.limit,
                    "oom_count": (
                        None if m.oom_count is None else m.oom_count + self._count_job_oom_kills()
                    ),
                }
            except (OSError, ValueError):
                out["memory_stat"] = dict.fromkeys(("usage", "max_usage", "limit", "oom_count"))
        if self.has(CPUACCT):
            backend, path = self._dirs[CPUACCT]
            try:
                usage: int | None = backend.cpu_usage_ns(path)
                user, system = backend.cpu_user_system_ns(path)
                out["cpu_stat"] = {"usage": usage, "user": user, "system": system}
            except (OSError, ValueError, KeyError):
                out["cpu_stat"] = dict.fromkeys(("usage", "user", "system"))
        if self.has(PIDS):
            backend, path = self._dirs[PIDS]
            try:
                out["pids"] = {"current": backend.pids_current(path), "max": backend.pids_max(path)}
            except (OSError, ValueError):
                out["pids"] = {"current": None, "max": None}
        return out

    def counters(self, budget: FdBudget, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """The figures of :meth:`stats` for a metrics scrape: the counters read through files
        kept open (:mod:`plugins.cgroups.counters`), the memory and task limits from
        *recorded*, the ``limits`` of the plugin's state: each was read back from the
        kernel when Corral wrote it, and nothing else writes them (a limit never set is
        the kernel's default, unlimited).
        """
        if self._counters is None:
            files = [
                (counter, path / counter.file)
                for controller, (backend, path) in self._dirs.items()
                for counter in backend.counters.get(controller, ())
            ]
            self._counters = OpenCounters(files, budget)
        out: dict[str, Any] = self._counters.read()
        if "memory_stat" in out:
            memory = out["memory_stat"]
            memory["limit"] = recorded.get("mem")
            if memory.get("oom_count") is not None:
                # v1: the jobs' kills as last counted, at each OOM the watcher wakes for
                # and by ``info``: a scrape reads no file of the jobs'.
                memory["oom_count"] += self._job_oom_kills
        if "pids" in out:
            out["pids"]["max"] = recorded.get("pids")
        return out

    def close_counters(self) -> None:
        """Close the files :meth:`counters` keeps open."""
        if self._counters is not None:
            self._counters.close()
            self._counters = None


def _kill(pids: Iterable[int], keep: int | None) -> int:
    count = 0
    for pid in pids:
        if pid == keep:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count


def _children(path: Path) -> list[Path]:
    """The child cgroups of the cgroup at *path* (none if it is gone)."""
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _procs_tree(path: Path) -> list[int]:
    """The pids in the cgroup at *path* and in its child cgroups (its jobs' and, on v2,
    its init's leaf: one level)."""
    found = procs(path)
    for child in _children(path):
        found += procs(child)
    return found


def _rmdir_tree(path: Path) -> bool:
    """Remove a cgroup directory and any child cgroup under it; False while tasks remain."""
    # Control files do not keep a cgroup from going: try the directory itself first,
    # and only look for child cgroups (a stat-free scandir) when it is busy.
    if _rmdir(path):
        return True
    return all(_rmdir_tree(child) for child in _children(path)) and _rmdir(path)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from None
    return True
