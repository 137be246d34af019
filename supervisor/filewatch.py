"""Wake a reader when files in a directory are written: inotify, instead of polling.

A job writes its output straight to files (see :mod:`supervisor.jobs`); a
``stream`` reader that polled them every few ms added that much to every
keystroke's echo. With a watch on the job's directory, the kernel wakes the
reader at each write (consecutive events of one file are merged while unread,
so a fast writer costs a wake-up per read, not per write).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import trio

from supervisor.fds import close_soon

# linux/inotify.h
IN_MODIFY = 0x00000002
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(None, use_errno=True)


class DirectoryWatch:
    """Writes to the files of one directory, as the names of the files written."""

    def __init__(self, path: Path) -> None:
        """
        Raises:
            OSError: no watch can be made (too many inotify instances, say): poll instead.
        """
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch {path}")
        self.fd = fd

    async def wait(self, timeout: float) -> set[str]:
        """The names of the files written since the last call, once there are some; an
        empty set after *timeout* seconds without any."""
        names = self._drain()
        if names:
            return names
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self.fd)
        return self._drain()

    def _drain(self) -> set[str]:
        names: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return names
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length]
                names.add(name.rstrip(b"\0").decode("utf-8", "replace"))
                offset += _EVENT.size + length

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        close_soon(self.fd)  # may wait ~15 ms in the kernel
