"""Open paths of a container from the host, resolved inside the container's root.

The daemon reaches a container's files through ``/proc/PID/root`` of its init
(PID 1's root in its own mount namespace, so the container's bind mounts and
quota filesystem are seen as the container sees them). A container path is
never handed to a path-walking call of the host: the top-level path is opened
with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` relative to that root,
so ``..`` and every symlink, absolute or not, stay inside the container even
while the container swaps them; everything below is walked one component at a
time with ``O_NOFOLLOW`` (see :mod:`plugins.fs.copy`).

No namespace is joined: this is plain fd-relative file access, safe in a
worker thread of the daemon.
"""

from __future__ import annotations

import ctypes
import errno
import os

#: asm-generic/unistd.h: the same number on x86_64 and arm64.
SYS_OPENAT2 = 437
#: linux/openat2.h
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
#: Retries when openat2 reports a concurrent rename or mount (EAGAIN), as the init does.
RETRIES = 32


class _OpenHow(ctypes.Structure):
    """``struct open_how`` of linux/openat2.h."""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """``openat2(2)``; returns the new fd (always ``O_CLOEXEC``).

    Raises:
        OSError: with the errno of the call and *path* as its filename.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)
    for _ in range(RETRIES):
        fd = _libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def open_in_root(rootfd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open *path* as if *rootfd* were ``/``: no symlink or ``..`` leads out of it."""
    return openat2(rootfd, path, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


class RootGone(Exception):
    """The container's init is gone (or its pid now names another process)."""


def open_container_root(pid: int) -> int:
    """An ``O_PATH`` fd of the root directory of process *pid* (a container's init).

    Raises:
        RootGone: the process is gone, or its root is the host's own root
            (its pid was reused by a host process).
    """
    try:
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RootGone(f"cannot open the root of process {pid}: {exc.strerror}") from None
    st, host = os.fstat(fd), os.stat("/")
    if (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino):
        os.close(fd)
        raise RootGone(f"process {pid} runs in the host's root")
    return fd


def split(path: str) -> tuple[str, str | None]:
    """``/a/b/c`` -> (``/a/b``, ``c``); the root itself -> (``/``, None).

    Trailing slashes are ignored here; callers decide what they mean.
    """
    stripped = path.rstrip("/")
    if not stripped:
        return "/", None
    parent, _, name = stripped.rpartition("/")
    return parent or "/", name
