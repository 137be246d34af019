"""Reach the host's files as a client could itself: per-thread credentials (Linux only).

A client that is not root (a member of ``[daemon] socket_group``) must not read
or write through ``copy`` what it could not reach on its own. So the host side
of its copy runs in a thread of its own (:func:`run_as_client`) whose filesystem
credentials are the client's: ``setfsuid``/``setfsgid`` and its supplementary
groups, with no capability in effect. The kernel then checks every path walk,
open, create, chown and chmod on the host as it would for the client, at the
moment it happens: no check-then-open race, and a symlink swapped in by the
client is followed with the client's rights or not at all.

Every call here changes only the calling thread. glibc's ``setgroups`` (and
``setuid``...) would change every thread of the daemon, so the groups are set
with the raw system call; ``setfsuid``, ``setfsgid`` and ``capset`` are plain
system calls in glibc. The thread ends with the copy, taking its credentials
with it: no worker thread of the daemon is ever left changed.

The container side of the same copy needs the daemon's rights (its files
belong to other users); :func:`as_daemon` gives them back for one step and takes
them away again. On a thread that is not acting as a client it does nothing.

A container with ids of its own (a user namespace mapping them onto a block of host
ids, :class:`IdMapping`) has its root and binds id-mapped: only ids of its block can be
written there, so what the daemon creates in it is made with its root's ids
(:func:`as_ids`), and owners are given as host ids (:meth:`IdMapping.to_host`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from supervisor.api import Credentials

T = TypeVar("T")

#: SYS_setgroups (the 32-bit gid one) by machine.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(platform.machine())
#: linux/capability.h
_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.setfsuid.argtypes = _libc.setfsgid.argtypes = (ctypes.c_uint,)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_Caps = _CapData * 2

_state = threading.local()


class IdentityError(Exception):
    """The thread could not take (or give back) the client's or the daemon's credentials:
    the copy stops there."""


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _capget() -> ctypes.Array[_CapData]:
    caps = _Caps()
    _check(_libc.capget(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), caps), "capget")
    return caps


def _set_effective(caps: ctypes.Array[_CapData], effective: tuple[int, int]) -> None:
    for word, value in zip(caps, effective, strict=True):
        word.effective = value
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), caps), "capset")


def _set_fs_ids(uid: int, gid: int) -> None:
    """setfsuid/setfsgid, checked: they report no error, only the id in force before."""
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    # An invalid id (-1) changes nothing and returns the id in force.
    if _libc.setfsuid(0xFFFFFFFF) != uid or _libc.setfsgid(0xFFFFFFFF) != gid:
        raise OSError(errno.EPERM, f"cannot take the filesystem ids {uid}:{gid}")


def _set_groups(groups: tuple[int, ...]) -> None:
    if _SYS_SETGROUPS is None:
        raise OSError(errno.ENOSYS, f"per-thread setgroups unknown on {platform.machine()}")
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_SETGROUPS), ctypes.c_size_t(len(groups)), ctypes.byref(array)
        ),
        "setgroups",
    )


class _Client:
    """The calling thread's client identity, and the daemon's capabilities to go back to."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.caps = _capget()
        self.daemon_effective = (self.caps[0].effective, self.caps[1].effective)
        #: Inside :func:`as_daemon`.
        self.raised = False

    def lower(self) -> None:
        """The client's filesystem ids, and no capability in effect (only permitted)."""
        try:
            _set_fs_ids(self.credentials.uid, self.credentials.gid)
            _set_effective(self.caps, (0, 0))
        except OSError as exc:
            raise IdentityError(f"cannot act as uid {self.credentials.uid}: {exc}") from None

    def raise_(self) -> None:
        """The daemon's ids and capabilities again."""
        try:
            _set_effective(self.caps, self.daemon_effective)
            _set_fs_ids(0, 0)
        except OSError as exc:
            raise IdentityError(f"cannot act as the daemon again: {exc}") from None


def run_as_client(credentials: Credentials, fn: Callable[[], T]) -> T:
    """Run *fn* in a new thread acting as the client, and return (or raise) what it does.

    Blocking: call it from a worker thread. The new thread ends with *fn*.
    """
    outcome: list[tuple[bool, object]] = []

    def main() -> None:
        try:
            try:
                client = _Client(credentials)
                _set_groups(credentials.groups)  # needs CAP_SETGID: before lowering
            except OSError as exc:
                raise IdentityError(f"cannot act as uid {credentials.uid}: {exc}") from None
            client.lower()
            _state.client = client
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=main, name=f"copy as uid {credentials.uid}")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


@contextmanager
def as_daemon() -> Iterator[None]:
    """The daemon's rights for the block, on a thread of :func:`run_as_client` (else a no-op)."""
    client: _Client | None = getattr(_state, "client", None)
    if client is None or client.raised:  # not a client's thread, or raised already (nested)
        yield
        return
    client.raise_()
    client.raised = True
    try:
        yield
    finally:
        client.raised = False
        client.lower()


def acting_as_client() -> Credentials | None:
    """The client the calling thread acts as, if any."""
    client: _Client | None = getattr(_state, "client", None)
    return client.credentials if client is not None else None


@contextmanager
def as_ids(uid: int, gid: int) -> Iterator[None]:
    """Filesystem ids *uid*:*gid* for the block, the capabilities in effect kept (the
    kernel takes the filesystem ones when the fsuid leaves 0), then as before."""
    caps = _capget()
    effective = (caps[0].effective, caps[1].effective)
    old_uid, old_gid = _libc.setfsuid(0xFFFFFFFF), _libc.setfsgid(0xFFFFFFFF)
    try:
        _set_fs_ids(uid, gid)
        _set_effective(caps, effective)
    except OSError as exc:
        _set_fs_ids(old_uid, old_gid)
        _set_effective(caps, effective)
        raise IdentityError(f"cannot act as host ids {uid}:{gid}: {exc}") from None
    try:
        yield
    finally:
        _set_fs_ids(old_uid, old_gid)
        _set_effective(caps, effective)


@dataclass(frozen=True)
class IdMapping:
    """How a process's user namespace maps its uids and gids onto the host's
    (``/proc/PID/uid_map``, ``gid_map``): ``(inside, host, count)`` extents."""

    uids: tuple[tuple[int, int, int], ...]
    gids: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, pid: int) -> IdMapping:
        def extents(name: str) -> tuple[tuple[int, int, int], ...]:
            with open(f"/proc/{pid}/{name}") as f:
                return tuple((int(a), int(b), int(c)) for a, b, c in map(str.split, f))

        return cls(extents("uid_map"), extents("gid_map"))

    @property
    def is_host(self) -> bool:
        """The host's own ids."""
        return self.uids == self.gids == ((0, 0, 2**32 - 1),)

    def to_host(self, uid: int, gid: int) -> tuple[int, int]:
        """The host ids of *uid*:*gid*.

        Raises:
            ValueError: one is not mapped.
        """
        return _map(self.uids, uid, "uid"), _map(self.gids, gid, "gid")


def _map(extents: tuple[tuple[int, int, int], ...], value: int, kind: str) -> int:
    for inside, host, count in extents:
        if inside <= value < inside + count:
            return host + value - inside
    raise ValueError(f"{kind} {value} is not mapped in the container's user namespace")
