"""The one interface both cgroup hierarchies implement, and the file helpers they share.

A :class:`Backend` knows the files of one cgroup version; every method takes the
container's directory in the hierarchy that holds the controller concerned (on
v1 each controller has its own tree, on v2 all share one). The container's
:class:`~plugins.cgroups.group.ContainerCgroups` picks, per controller, the
backend that :mod:`plugins.cgroups.layout` detected for it at start.

Writes raise :class:`~supervisor.api.InvalidRequest` when the kernel refuses
the *value* (EINVAL, ERANGE, EBUSY: the client asked something impossible) and
:class:`CgroupError` for anything else (the host is in the way).
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from supervisor.api import CorralError, InvalidRequest

if TYPE_CHECKING:
    from plugins.cgroups.counters import Counter

# Names of the controllers Corral uses. ``cpuacct``, ``freezer`` and ``devices`` are
# separate controllers on v1 only; on v2 CPU usage and freezing are in the core.
MEMORY = "memory"
CPU = "cpu"
CPUACCT = "cpuacct"
CPUSET = "cpuset"
PIDS = "pids"
FREEZER = "freezer"
DEVICES = "devices"
CONTROLLERS = (MEMORY, CPU, CPUACCT, CPUSET, PIDS, FREEZER, DEVICES)

#: The kernel's "no limit" for values read as numbers.
UNLIMITED_FROM = 1 << 62

#: How long freezing may take before the kill goes on without it (tasks in D state).
FREEZE_TIMEOUT = 5.0
FREEZE_POLL = 0.005

#: Errors of a write that mean "this value is not acceptable", not "the host is broken".
_VALUE_ERRNOS = {errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.ENOSPC, errno.EOVERFLOW}


class CgroupError(CorralError):
    """A cgroup file or directory cannot be used (permissions, missing controller...)."""


def read(path: Path) -> str:
    """The whole content of a cgroup file, without the trailing newline."""
    # Plain fd reads: ``info`` reads a dozen of these, and a text file object costs 3x.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode().rstrip("\n")


def read_int(path: Path) -> int | None:
    """A number file; None for ``max``, ``-1`` or the kernel's huge "unlimited" values."""
    text = read(path).strip()
    if text == "max":
        return None
    value = int(text)
    return None if value < 0 or value >= UNLIMITED_FROM else value


def write(path: Path, value: str, what: str | None = None) -> None:
    """Write one value to a cgroup file (one ``write(2)``, as the kernel expects).

    Args:
        path: the file.
        value: the text to write.
        what: how the client named the value (``mem 1048576``); a refusal by the
            kernel is then an InvalidRequest naming it.
    """
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        if what is not None and exc.errno in _VALUE_ERRNOS:
            raise InvalidRequest(f"{what} refused by the kernel: {exc.strerror}") from None
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed file (``memory.stat``, ``cpu.stat``, ``memory.events``, ``memory.oom_control``)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, number = line.partition(" ")
        if number.strip().lstrip("-").isdigit():
            values[key] = int(number)
    return values


def read_keyed(path: Path) -> dict[str, int]:
    """:func:`parse_keyed` of a file."""
    return parse_keyed(read(path))


def read_keyed_if_present(path: Path) -> dict[str, int]:
    """:func:`read_keyed`, or nothing when the kernel has no such file."""
    try:
        return read_keyed(path)
    except FileNotFoundError:
        return {}


def procs(path: Path) -> list[int]:
    """The pids in the cgroup at *path* (``cgroup.procs``: processes, not threads)."""
    try:
        return [int(line) for line in read(path / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class MemoryStat:
    """The memory figures of ``info``; None where the kernel does not tell."""

    usage: int | None
    max_usage: int | None
    limit: int | None
    oom_count: int | None
    #: The kernel's ``memory.stat`` under Warden's names (``rss``, ``cache``, ``total_rss``...).
    details: dict[str, int] = field(default_factory=dict)


class Backend(ABC):
    """The files of one cgroup version, behind the operations Corral needs."""

    version: ClassVar[int]
    #: The files of the figures a metrics scrape reads (:mod:`plugins.cgroups.counters`),
    #: by controller.
    counters: ClassVar[dict[str, tuple[Counter, ...]]]
    #: The file a process writes ``0`` to, to join the cgroup itself.
    join_file: ClassVar[str] = "cgroup.procs"
    #: Whether a cgroup can be renamed within its parent (see :mod:`plugins.cgroups.spares`).
    renames: ClassVar[bool] = False

    # -- set-up -------------------------------------------------------------------

    @abstractmethod
    def setup_parent(self, controller: str, path: Path) -> None:
        """Make the directory *path* (Corral's parent, or a level above it) able to hold containers."""

    @abstractmethod
    def setup_containers_parent(self, controller: str, path: Path) -> None:
        """Give Corral's own parent what its new children inherit (after :meth:`setup_parent`)."""

    @abstractmethod
    def setup_child(self, controller: str, path: Path) -> None:
        """Configure a container's new directory before any task joins it."""

    # -- memory -------------------------------------------------------------------

    @abstractmethod
    def set_memory(self, path: Path, limit: int) -> None:
        """Limit memory to *limit* bytes, swap included (so the limit is real)."""

    @abstractmethod
    def memory_limit(self, path: Path) -> int | None:
        """The memory limit in force (None: unlimited)."""

    @abstractmethod
    def memory_stat(self, path: Path) -> MemoryStat:
        """Usage, peak, limit and OOM kills."""

    @abstractmethod
    def oom_kills(self, path: Path) -> int:
        """How many processes the kernel OOM-killed in this cgroup so far."""

    # -- cpu ----------------------------------------------------------------------

    @abstractmethod
    def set_cpu_shares(self, path: Path, shares: int) -> None:
        """Set the relative CPU weight, given as v1 shares."""

    @abstractmethod
    def cpu_shares(self, path: Path, written: int | None) -> int:
        """The relative CPU weight in force, as v1 shares.

        Args:
            written: the shares last written, if known; a version that stores the
                weight in another unit returns it when it still maps to the value
                in force, so a client reads back what it wrote.
        """

    @abstractmethod
    def set_cpu_quota(self, path: Path, cpus: float) -> None:
        """Allow *cpus* cores of CPU time (a hard quota)."""

    @abstractmethod
    def cpu_quota(self, path: Path) -> float | None:
        """The quota in force, in cores (None: unlimited)."""

    @abstractmethod
    def cpu_usage_ns(self, path: Path) -> int:
        """CPU time used by the cgroup so far, in nanoseconds (``cpuacct`` on v1)."""

    @abstractmethod
    def cpu_user_system_ns(self, path: Path) -> tuple[int, int]:
        """CPU time used so far in user and in system mode, in nanoseconds."""

    # -- cpuset -------------------------------------------------------------------

    @abstractmethod
    def set_cpuset(self, path: Path, cpus: str) -> None:
        """Restrict the cgroup to the cores *cpus* (cpuset syntax)."""

    @abstractmethod
    def cpuset(self, path: Path) -> str:
        """The cores in force, in the kernel's cpuset syntax."""

    @abstractmethod
    def available_cores(self, path: Path) -> str:
        """The cores a child of the directory *path* may be given (cpuset syntax)."""

    # -- pids ---------------------------------------------------------------------

    def set_pids_max(self, path: Path, limit: int) -> None:
        """Allow at most *limit* tasks (the same file on both versions)."""
        write(path / "pids.max", str(limit), f"pids {limit}")

    def pids_max(self, path: Path) -> int | None:
        """The task limit in force (None: unlimited)."""
        return read_int(path / "pids.max")

    def pids_current(self, path: Path) -> int | None:
        """How many tasks the cgroup holds now."""
        return read_int(path / "pids.current")

    # -- freezer and devices -------------------------------------------------------

    @abstractmethod
    def start_freeze(self, path: Path) -> None:
        """Ask the kernel to freeze every task of the cgroup."""

    @abstractmethod
    def frozen(self, path: Path) -> bool:
        """Whether the freeze asked by :meth:`start_freeze` is complete."""

    @abstractmethod
    def thaw(self, path: Path) -> None:
        """Let the cgroup's tasks run again."""

    def kill_all(self, path: Path) -> bool:
        """Kill every task at once if the version can (v2 ``cgroup.kill``); False if it cannot."""
        return False
