"""The ``copy`` protocol command: ``["copy", HANDLE, "in"|"out", SRC, DST, OWNER?]``.

The handler checks the request, then runs one :class:`~plugins.fs.copy.Copier`
in a trio worker thread (the copy blocks on disk I/O, never on the container).
A client that is not root (a ``socket_group`` member) reaches the host only as
itself: its copy runs in a thread of its own with its credentials
(:mod:`plugins.fs.identity`), its files copied out belong to it, and it may
name only itself (one of its groups) as OWNER.
Copies in flight are tracked per container (in its stash) so that destroying
the container abandons them and waits for them before its filesystem is released.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from plugins.fs.copy import Cancelled, ContainerSide, Copier, CopyError, HostSide, Owner
from plugins.fs.identity import IdentityError, IdMapping, run_as_client
from plugins.fs.resolve import RootGone, open_container_root, open_in_root
from supervisor.api import (
    Args,
    ContainerView,
    Credentials,
    InvalidRequest,
    InvalidState,
    LimitExceeded,
    Request,
    StashKey,
)

#: The account whose uid/gid own what is copied into a container.
CONTAINER_USER = "corral"
#: Largest /etc/passwd read from a container.
MAX_PASSWD = 4 * 1024 * 1024
#: How long destroy waits for abandoned copies to notice (they check every chunk).
ABANDON_WAIT = 30.0


class Copies:
    """The copies in flight of one container, so destroy can abandon them."""

    def __init__(self) -> None:
        self._running: set[threading.Event] = set()

    @contextmanager
    def track(self) -> Iterator[threading.Event]:
        """Register one copy; its event is set when the container goes away."""
        cancel = threading.Event()
        self._running.add(cancel)
        try:
            yield cancel
        finally:
            self._running.discard(cancel)

    async def abandon(self) -> None:
        """Cancel the copies and wait until their threads have let go of the container."""
        for cancel in self._running:
            cancel.set()
        with trio.move_on_after(ABANDON_WAIT):
            while self._running:
                await trio.sleep(0.01)


COPIES = StashKey[Copies]()


async def abandon_copies(container: ContainerView) -> None:
    """Cancel the container's copies in flight and wait for them (destroy)."""
    copies = container.stash.get(COPIES, None)
    if copies is not None:
        await copies.abandon()


def check_path(command: str, what: str, value: str) -> str:
    """An absolute path without NUL or ``.``/``..`` components, else InvalidRequest naming it."""
    if not value.startswith("/"):
        raise InvalidRequest(f"{command}: {what} {value!r} is not an absolute path")
    if "\0" in value:
        raise InvalidRequest(f"{command}: {what} {value!r} contains a NUL byte")
    if any(part in (".", "..") for part in value.split("/")):
        raise InvalidRequest(f"{command}: {what} {value!r} contains a '.' or '..' component")
    return value


def parse_owner(value: str) -> Owner:
    """``user:group`` (host names or numbers; ``user`` alone means its primary group)."""
    user, sep, group = value.partition(":")
    if not user or (sep and not group):
        raise InvalidRequest(f"copy out: OWNER {value!r} is not USER:GROUP")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, primary_gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise InvalidRequest(f"copy out: OWNER {value!r}: no host user {user!r}") from None
        uid, primary_gid = int(user), int(user)
    if not group:
        gid = primary_gid
    elif group.isdigit():
        gid = int(group)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise InvalidRequest(f"copy out: OWNER {value!r}: no host group {group!r}") from None
    return _owner(uid, gid)


def _owner(uid: int, gid: int) -> Owner:
    return Owner(uid, gid, keep_setuid=uid != 0, keep_setgid=gid != 0)


def copy_out_owner(text: str | None, client: Credentials) -> Owner:
    """Who owns what ``copy out`` makes on the host: OWNER, else root, or the client
    itself when it is not root; a client that is not root may give only itself.

    Refused rather than left to the kernel (which would refuse the chown too): a
    copy refused half-way leaves files behind.
    """
    if client.root:
        return parse_owner(text) if text is not None else Owner(0, 0, False, False)
    if text is None:
        return _owner(client.uid, client.gid)
    owner = parse_owner(text)
    if owner.uid != client.uid or not client.in_group(owner.gid):
        groups = ", ".join(map(str, sorted({client.gid, *client.groups})))
        raise InvalidRequest(
            f"copy out: OWNER {text!r} ({owner.uid}:{owner.gid}) is not the client's own: a "
            f"client of uid {client.uid} may give only itself as owner (uid {client.uid}, "
            f"groups {groups})"
        )
    return owner


def container_user(rootfd: int, handle: str) -> Owner:
    """Uid and gid of :data:`CONTAINER_USER` in the container's own ``/etc/passwd``.

    The file is read, never executed, and opened inside the container root
    without blocking (it could be a fifo the container put there).
    """
    try:
        fd = open_in_root(rootfd, "/etc/passwd", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise InvalidRequest(f"container {handle}: copy in: /etc/passwd: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidRequest(f"container {handle}: copy in: /etc/passwd is not a regular file")
        text = f.read(MAX_PASSWD).decode("utf-8", "replace")
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == CONTAINER_USER:
            if fields[2].isdigit() and fields[3].isdigit():
                return Owner(int(fields[2]), int(fields[3]))
    raise InvalidRequest(
        f"container {handle}: copy in: no valid user {CONTAINER_USER!r} in the container's /etc/passwd"
    )


def _run_copy(
    pid: int,
    handle: str,
    direction: str,
    src: str,
    dst: str,
    owner: Owner | None,
    client: Credentials,
    cancel: threading.Event,
) -> None:
    """The blocking part: open the container root, then copy (in a worker thread), with
    the client's rights on the host when it is not root."""
    try:
        rootfd = open_container_root(pid)
        ids = IdMapping.of(pid)
    except (RootGone, FileNotFoundError, ProcessLookupError):
        raise InvalidState(f"container {handle}: its init is not running") from None
    try:
        container = ContainerSide(rootfd, ids)
        if direction == "in":
            user = container_user(rootfd, handle)
            try:
                owner = Owner(*ids.to_host(user.uid, user.gid))
            except ValueError as exc:
                raise InvalidRequest(
                    f"container {handle}: copy in: {CONTAINER_USER}: {exc}"
                ) from None
            copier = Copier(HostSide(), container, owner, cancel)
        else:
            assert owner is not None
            copier = Copier(container, HostSide(), owner, cancel)
        if client.root:
            copier.run(src, dst)
        else:
            try:
                run_as_client(client, lambda: copier.run(src, dst))
            except IdentityError as exc:
                raise InvalidState(f"container {handle}: copy {direction}: {exc}") from None
    finally:
        os.close(rootfd)


async def copy(request: Request, *args: Any) -> str:
    """``copy`` handler (see the module docstring)."""
    a = Args("copy", list(args), ("HANDLE", "DIRECTION", "SRC", "DST", "OWNER"))
    container = request.container(a.string(0))
    direction = a.string(1)
    if direction not in ("in", "out"):
        raise InvalidRequest(f"copy: unknown direction {direction!r} (known: in, out)")
    command = f"copy {direction}"
    src = check_path(command, "SRC", a.string(2))
    dst = check_path(command, "DST", a.string(3))
    owner_text = a.string(4, required=False)
    if direction == "in" and owner_text is not None:
        raise InvalidRequest(
            "copy in: OWNER is only for copy out (copied-in files belong to the container user)"
        )
    owner = copy_out_owner(owner_text, request.credentials) if direction == "out" else None
    container.require("copy")
    sandbox = container.sandbox
    if sandbox is None or not sandbox.alive:
        raise InvalidState(f"container {container.handle}: its init is not running")
    with container.stash.setdefault(COPIES, Copies()).track() as cancel:
        try:
            await trio.to_thread.run_sync(
                _run_copy,
                sandbox.pid,
                container.handle,
                direction,
                src,
                dst,
                owner,
                request.credentials,
                cancel,
            )
        except Cancelled:
            raise InvalidState(
                f"container {container.handle}: {command} {src}: container destroyed"
            ) from None
        except CopyError as exc:
            message = f"container {container.handle}: {command} {exc.path}: {exc.reason}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LimitExceeded(message) from None
            raise InvalidRequest(message) from None
    container.log.info("copied", direction=direction, src=src, dst=dst)
    return "ok"
