"""Who is at the other end of a connection: the client's credentials, taken at accept.

The kernel records the connecting process's pid, effective uid and gid in the
socket (``SO_PEERCRED``) when it calls ``connect``, and, since Linux 4.13, its
supplementary groups (``SO_PEERGROUPS``): a snapshot the client cannot change
afterwards. On an older kernel the groups are read from ``/proc/PID/status``
at accept, and dropped when that process is gone or no longer has the uid the
socket recorded (its pid reused): fewer groups can only mean less access.

Handlers get them as :attr:`supervisor.api.Request.credentials`; the ``fs``
plugin opens the host paths of ``copy`` with them (see docs/protocol.md).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

#: asm-generic/socket.h (the same on x86_64 and arm64); not in Python's socket module.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
#: Most supplementary groups a process may have (NGROUPS_MAX), and what is asked first.
NGROUPS_MAX = 65536
FEW_GROUPS = 256
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Credentials:
    """The client process's identity when it connected."""

    pid: int
    uid: int
    gid: int
    #: Supplementary groups (the primary group may or may not be among them).
    groups: tuple[int, ...]

    @property
    def root(self) -> bool:
        """Uid 0: trusted with the host's files as the daemon itself is."""
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def peer_credentials(sock: socket.socket) -> Credentials:
    """The credentials of the process that connected *sock* (a Unix stream socket)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Credentials(pid, uid, gid, _peer_groups(sock, pid, uid))


def _peer_groups(sock: socket.socket, pid: int, uid: int) -> tuple[int, ...]:
    for room in (FEW_GROUPS, NGROUPS_MAX):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * room)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue  # more groups than room for them: ask again with room for all
            if exc.errno == errno.ENOPROTOOPT:  # before Linux 4.13
                return proc_groups(pid, uid)
            raise
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return proc_groups(pid, uid)


def proc_groups(pid: int, uid: int) -> tuple[int, ...]:
    """The supplementary groups of process *pid* from ``/proc/PID/status``; none when it is
    gone or its effective uid is not *uid* (the pid now names another process)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        if int(fields["Uid"].split()[1]) != uid:
            return ()
        return tuple(int(g) for g in fields["Groups"].split())
    except (KeyError, IndexError, ValueError):
        return ()
