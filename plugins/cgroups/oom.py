"""The OOM watcher: tells when the kernel OOM-kills a process of a container.

Both versions end in the same question, "did the ``oom_kill`` counter of the
cgroup go up?", and differ in how the kernel wakes us:

- v1: an eventfd registered on ``memory.oom_control`` through
  ``cgroup.event_control``. The kernel signals it when the cgroup *enters* OOM,
  just before it picks a victim, so the counter is re-read for a moment after
  the wake-up. (It is also signalled when the cgroup is removed.)
- v2: inotify on ``memory.events``, which the kernel marks modified whenever one
  of its counters changes.

On v1 the counter of the container's own cgroup misses the kills in its jobs'
memory cgroups (the kernel counts a kill in the victim's cgroup only): the
plugin's watch reads the sum (``count``, see
:meth:`~plugins.cgroups.group.ContainerCgroups.oom_kills`). The eventfd is
signalled all the same, the container's limit being the one hit.

The wake-up is registered (:func:`register`) before any limit is written, so
none can OOM unseen: by the caller, or by :func:`watch` before it reports
started. A watcher never raises for a cgroup that vanishes (the container is
going away); it just ends.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import trio

from plugins.cgroups.backend import Backend, write
from supervisor.api import close_soon

#: ``on_oom(count)``: called with the new value of the counter each time it rises.
OomCallback = Callable[[int], Awaitable[None]]

#: How long a v1 wake-up may precede the kill it announces.
V1_KILL_DELAY = 1.0
V1_POLL = 0.01

# linux/inotify.h
IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


class Registration(NamedTuple):
    """The kernel wakes :attr:`fd` at each OOM of one memory cgroup (see :func:`register`)."""

    #: v1: an eventfd; v2: an inotify fd.
    fd: int
    #: v1: ``memory.oom_control``, open while the eventfd is registered on it; v2: -1.
    control: int = -1

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        close_soon(self.fd)  # an inotify instance's close may wait ~15 ms in the kernel
        if self.control >= 0:
            os.close(self.control)


def register(backend: Backend, path: Path) -> Registration:
    """Have the kernel wake an fd at each OOM of the memory cgroup at *path*, from now on.

    Raises:
        FileNotFoundError: the cgroup is gone.
    """
    if backend.version == 1:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = os.open(path / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                write(path / "cgroup.event_control", f"{efd} {control}")
            except BaseException:
                os.close(control)
                raise
        except BaseException:
            os.close(efd)
            raise
        return Registration(efd, control)
    fd = inotify_init()
    try:
        inotify_add_watch(fd, path / "memory.events", IN_MODIFY)
    except BaseException:
        os.close(fd)
        raise
    return Registration(fd)


async def watch(
    backend: Backend,
    path: Path,
    seen: int,
    on_oom: OomCallback,
    registration: Registration | None = None,
    *,
    count: Callable[[], int] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Watch the memory cgroup at *path* until cancelled or the cgroup is gone.

    Args:
        backend: the version of the hierarchy *path* is in.
        path: the container's memory cgroup.
        seen: the OOM kills already reported (persisted across daemon restarts,
            so kills that happened while no daemon ran are reported once).
        on_oom: awaited with the new count when the counter rises above *seen*.
        registration: made by :func:`register` already (the watch closes it);
            if None the watch registers before it reports started.
        count: reads the OOM kills to report (raising FileNotFoundError once the
            cgroup is gone); by default the cgroup's own counter.
    """
    if count is None:
        count = partial(backend.oom_kills, path)
    if registration is None:
        try:
            registration = register(backend, path)
        except FileNotFoundError:
            # The cgroup went away (or never was, restoring a half-made container):
            # nothing to watch, and nothing that would fail to be seen.
            task_status.started()
            return
    task_status.started()
    try:
        seen = await _check(count, seen, on_oom)
        while True:
            await trio.lowlevel.wait_readable(registration.fd)
            if backend.version == 1:
                try:
                    os.eventfd_read(registration.fd)
                except BlockingIOError:
                    continue
                if not path.is_dir():
                    return
                # The event comes as the cgroup enters OOM; the kill follows.
                with trio.move_on_after(V1_KILL_DELAY):
                    while count() <= seen:
                        await trio.sleep(V1_POLL)
            elif IN_IGNORED in drain_events(registration.fd):
                return  # the file (so the cgroup) is gone
            seen = await _check(count, seen, on_oom)
    except FileNotFoundError:
        return  # the cgroup went away under us
    finally:
        registration.close()


async def _check(count: Callable[[], int], seen: int, on_oom: OomCallback) -> int:
    now = count()
    if now > seen:
        await on_oom(now)
    return max(now, seen)


# -- inotify through ctypes (the standard library has no binding) -------------------

_libc = ctypes.CDLL(None, use_errno=True)


def inotify_init() -> int:
    """A non-blocking, close-on-exec inotify fd."""
    fd = int(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def inotify_add_watch(fd: int, path: Path, mask: int) -> int:
    """Watch *path* for the events in *mask*; FileNotFoundError if it does not exist."""
    wd = int(_libc.inotify_add_watch(fd, os.fsencode(path), ctypes.c_uint32(mask)))
    if wd < 0:
        err = ctypes.get_errno()
        cls = FileNotFoundError if err == errno.ENOENT else OSError
        raise cls(err, f"inotify_add_watch {path}: {os.strerror(err)}")
    return wd


def drain_events(fd: int) -> set[int]:
    """Read every pending inotify event; the set of their masks' bits."""
    bits: set[int] = set()
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return bits
        bits.update(parse_event_masks(data))


def parse_event_masks(data: bytes) -> list[int]:
    """The single bits of the ``mask`` of each ``struct inotify_event`` in *data*.

    The struct is ``int wd; uint32 mask; uint32 cookie; uint32 len; char name[len]``.
    """
    bits: list[int] = []
    offset = 0
    while offset + 16 <= len(data):
        mask = int.from_bytes(data[offset + 4 : offset + 8], sys.byteorder)
        length = int.from_bytes(data[offset + 12 : offset + 16], sys.byteorder)
        bits += [1 << i for i in range(32) if mask & (1 << i)]
        offset += 16 + length
    return bits
