"""A cgroup per job: exact accounting and a kill that reaches everything a job started.

Each job gets ``CONTAINER/job-N`` in the hierarchies that count CPU and memory
(v1: ``cpuacct`` and ``memory``; v2: the unified tree, where ``cpu.stat`` is a
core file). The daemon opens their membership files and passes them with the
spawn request; the job's first process writes ``0`` to each before it runs
anything of the job (see the init's README), so every process the job starts is
in them from its first instruction, with no window to escape through and no
polling to catch it.

Why a cgroup and not the pids of a process group or session: a job's process may
``setsid``, and a finished process's CPU time is only folded into its parent's when
it is waited for (``RUSAGE_CHILDREN``), never for a daemon or an orphan; nor is its
peak memory, and ``ru_maxrss`` is one process's peak, not the sum of those alive
together. A cgroup counts every process that ever ran in it, ended or not, and
other jobs of the same container are in cgroups of their own.

In the other hierarchies (cpu, cpuset, pids, freezer, devices) the job stays in
its container's cgroup, so the container's limits, freezer and device list hold
for it unchanged. A job's cgroups set no limit: the container's hold for its
children (v1 memory is hierarchical, ``use_hierarchy``), and the kernel counts a
child's CPU and memory in its parent's, so the container's figures include its
jobs'.

Peak memory (``memory_peak``) is the job's cgroup's high-water mark of charged
memory, anonymous and page cache alike: v1 ``memory.max_usage_in_bytes``, v2
``memory.peak`` (Linux 5.19). What the job's first process had when forked (the
init's pages it shares) stays charged to the init's cgroup. Two consequences:

- v1 counts an OOM kill only in the victim's own memory cgroup, not its
  ancestors: the container's count adds its jobs'
  (:meth:`~plugins.cgroups.group.ContainerCgroups.oom_kills`), and a job's memory
  cgroup that saw a kill is kept until the container goes (:meth:`JobCgroup.remove`).
  The OOM eventfd and ``memory.pressure_level`` (``hierarchy``) of the container
  are signalled as before: it is the container's limit that is hit.
- v2 enables a controller for a cgroup's children only while no process is in it
  (the no-internal-processes rule): the container's init is moved to a leaf,
  ``CONTAINER/init``, once it runs (:meth:`~plugins.cgroups.group.ContainerCgroups.nest_init`),
  and ``memory`` is enabled in the container's ``cgroup.subtree_control``. A
  container made by an earlier daemon keeps its init in place: its jobs' peak is
  ``None``, as on a kernel without ``memory.peak``.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

from plugins.cgroups.backend import CPUACCT, MEMORY, Backend, CgroupError, procs, read_int
from plugins.cgroups.group import ContainerCgroups

#: The controllers a job's own cgroups are made for.
JOB_CONTROLLERS = (CPUACCT, MEMORY)


def job_dir_name(job_id: int) -> str:
    """A job's cgroup directory under its container's."""
    return f"job-{job_id}"


class JobCgroup:
    """One job's cgroups (see the module docstring): a :class:`~supervisor.api.JobGroup`."""

    def __init__(self, dirs: dict[str, tuple[Backend, Path]]) -> None:
        #: controller -> (backend, the job's directory for it).
        self._dirs = dirs
        self.join_fds: tuple[int, ...] = ()

    @classmethod
    def make(cls, container: ContainerCgroups, job_id: int, create: bool) -> JobCgroup | None:
        """Make the job's directories and open their membership files (*create*), or find
        them again after a restart; None when the container has none of the controllers,
        or its directories are gone (an administrator removed them; one gone is left out).

        Raises:
            CgroupError: the kernel refused a directory.
        """
        dirs = {
            c: (container.backend(c), container.path(c) / job_dir_name(job_id))
            for c in JOB_CONTROLLERS
            if container.has(c) and (not create or container.path(c).is_dir())
        }
        group = cls(dirs)
        if not dirs:
            return None
        if not create:
            return group if any(path.is_dir() for path in group._paths()) else None
        fds: list[int] = []
        try:
            for path, backend in group._paths().items():  # their parents were seen above
                try:
                    path.mkdir()
                except FileExistsError:
                    pass  # a job id is never reused: a leftover of a failed spawn
                fds.append(os.open(path / backend.join_file, os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            group.close_all(fds)
            group.remove()
            raise CgroupError(f"cannot make the job's cgroup: {exc.strerror}") from None
        group.join_fds = tuple(fds)
        return group

    def _paths(self) -> dict[Path, Backend]:
        """Each distinct directory (v2 has one for both controllers)."""
        return {path: backend for backend, path in self._dirs.values()}

    @staticmethod
    def close_all(fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        for fd in self.join_fds:
            os.close(fd)
        self.join_fds = ()

    def cpu_seconds(self) -> float | None:
        if CPUACCT not in self._dirs:
            return None
        backend, path = self._dirs[CPUACCT]
        try:
            return backend.cpu_usage_ns(path) / 1e9
        except (OSError, ValueError, KeyError):
            return None

    def usage(self) -> dict[str, float | int | None]:
        usage: dict[str, float | int | None] = dict.fromkeys(
            ("cpu_user", "cpu_system", "cpu_total", "memory_peak")
        )
        if CPUACCT in self._dirs:
            backend, path = self._dirs[CPUACCT]
            try:
                user, system = backend.cpu_user_system_ns(path)
                total = backend.cpu_usage_ns(path)
            except (OSError, ValueError, KeyError):
                pass
            else:
                # The total is exact (the scheduler's own sum); the split is sampled at
                # ticks, and on v1 does not even add up to it: scaled to the total, as
                # the kernel's cputime_adjust does for /proc/PID/stat.
                share = user / (user + system) if user + system else 1.0
                usage.update(
                    cpu_user=total * share / 1e9,
                    cpu_system=total * (1 - share) / 1e9,
                    cpu_total=total / 1e9,
                )
        if MEMORY in self._dirs:
            backend, path = self._dirs[MEMORY]
            peak = path / ("memory.max_usage_in_bytes" if backend.version == 1 else "memory.peak")
            try:
                usage["memory_peak"] = read_int(peak) if peak.exists() else None
            except (OSError, ValueError):
                pass
        return usage

    def empty(self) -> bool:
        return not any(procs(path) for path in self._paths())

    def kill(self) -> None:
        for path, backend in self._paths().items():
            try:
                if backend.kill_all(path):  # v2: the kernel kills all, forks included
                    continue
            except (CgroupError, OSError):
                pass
            for pid in procs(path):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        """Remove the job's cgroups, but for a v1 memory cgroup that saw an OOM kill: its
        count is the container's (see the module docstring), so it goes with the container."""
        kept = self._v1_memory_with_kills()
        for path in self._paths():
            if path == kept:
                continue
            try:
                path.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EBUSY):
                    raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from None

    def _v1_memory_with_kills(self) -> Path | None:
        if MEMORY not in self._dirs:
            return None
        backend, path = self._dirs[MEMORY]
        try:
            return path if backend.version == 1 and backend.oom_kills(path) else None
        except OSError:
            return None  # gone
