"""The counters a metrics scrape reads from a container's cgroups, through files kept open.

A scrape reads five small files per container (memory usage, its peak, OOM
kills, CPU time, tasks). Opening and closing a cgroup file costs about three
times reading it (11 us against 3 on the development VM: the path walk, and
the kernel making and freeing the file's buffer), so a container's counter
files are opened at its first scrape and kept open for its life: a ``pread``
at offset 0 makes the kernel write the file anew (seq_file). An open file
keeps a page of kernel memory for its buffer once read: with the open files,
about 24 KiB of unreclaimable slab per container (measured at 500). The files kept open are counted against :class:`FdBudget`, a
share of the daemon's open files limit; past it, files are opened for each
read, as ``info`` does: a scrape never makes a ``create`` run out of fds.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plugins.cgroups.backend import UNLIMITED_FROM, parse_keyed

#: The share of the open files limit the counter files of all containers may keep.
FD_SHARE = 4
#: Enough for any counter file read here (``cpu.stat`` is the longest, ~200 bytes).
READ_SIZE = 4096


def number(data: bytes) -> int | None:
    """A number file as :func:`~plugins.cgroups.backend.read_int` reads it: None for
    ``max``, ``-1`` and the kernel's huge "unlimited" values."""
    if data.startswith(b"max"):
        return None
    value = int(data)
    return None if value < 0 or value >= UNLIMITED_FROM else value


def keyed(key: str, scale: int = 1) -> Callable[[bytes], int | None]:
    """A reader of *key* in a flat-keyed file (absent: 0, as an OOM count is before the first)."""

    def parse(data: bytes) -> int | None:
        return parse_keyed(data.decode()).get(key, 0) * scale

    return parse


@dataclass(frozen=True)
class Counter:
    """A figure and the cgroup file it is read from."""

    #: ``memory_stat.usage`` and so on: the table and key of ``info``.
    table: str
    key: str
    #: The file's name in the cgroup directory of its controller.
    file: str
    parse: Callable[[bytes], int | None]


class FdBudget:
    """How many counter files may stay open, for every container of the daemon together."""

    def __init__(self, limit: int | None = None) -> None:
        """
        Args:
            limit: how many; by default a share (1/:data:`FD_SHARE`) of the open files
                limit when first asked (the daemon raises its limit after loading plugins).
        """
        self._left = limit

    def take(self) -> bool:
        """Count one more file kept open, if the budget allows it."""
        if self._left is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            self._left = soft // FD_SHARE if soft != resource.RLIM_INFINITY else 1 << 16
        if self._left <= 0:
            return False
        self._left -= 1
        return True

    def give_back(self) -> None:
        """Count one file fewer (it was closed)."""
        if self._left is not None:
            self._left += 1


class OpenCounters:
    """One container's counter files: kept open once read, while the budget allows."""

    def __init__(self, files: list[tuple[Counter, Path]], budget: FdBudget) -> None:
        self._files = files
        self._budget = budget
        self._fds: dict[Path, int] = {}

    def read(self) -> dict[str, dict[str, int | None]]:
        """Every counter now, by ``info`` table and key (None: the file cannot be read)."""
        out: dict[str, dict[str, int | None]] = {}
        fds = self._fds
        for counter, path in self._files:
            fd = fds.get(path)
            try:
                data = os.pread(fd, READ_SIZE, 0) if fd is not None else self._first(path)
                value = counter.parse(data)
            except OSError as exc:
                if fd is not None and exc.errno == errno.ENODEV:
                    self._close(path)  # its cgroup was removed
                value = None  # gone, or a kernel without the file (v2 memory.peak before 5.19)
            except ValueError:
                value = None
            table = out.get(counter.table)
            if table is None:
                table = out[counter.table] = {}
            table[counter.key] = value
        return out

    def _first(self, path: Path) -> bytes:
        """Open *path*, read it, and keep it open if the budget allows."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if not self._budget.take():
            try:
                return os.read(fd, READ_SIZE)
            finally:
                os.close(fd)
        self._fds[path] = fd
        return os.pread(fd, READ_SIZE, 0)

    def _close(self, path: Path) -> None:
        os.close(self._fds.pop(path))
        self._budget.give_back()

    def close(self) -> None:
        """Close every file kept open (the container's cgroups go, or the daemon stops)."""
        for path in list(self._fds):
            self._close(path)
