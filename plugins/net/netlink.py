"""rtnetlink requests over one socket the daemon keeps, awaited with trio.

Making a container's veth is on the path of every create. pyroute2's
``IPRoute`` cost about 2 ms per container there (a socket, an event loop and
request filters each time, in a worker thread); here the messages are still
pyroute2's, but they go over one trio socket, one request at a time, each
waiting for its acknowledgement. Dumps (listing devices and addresses at
start-up) stay with ``IPRoute`` in :mod:`.links`.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import trio
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR

#: struct nlmsghdr: length, type, flags, sequence number, port id.
_HEADER = struct.Struct("=IHHII")
_ERROR_CODE = struct.Struct("=i")


class RouteSocket:
    """A NETLINK_ROUTE socket opened on first use; requests are serialized."""

    def __init__(self) -> None:
        self._sock: trio.socket.SocketType | None = None
        self._lock = trio.Lock()
        self._sequence = 0

    def _socket(self) -> trio.socket.SocketType:
        if self._sock is None:
            sock = trio.socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock = sock
        return self._sock

    async def request(self, message: Any) -> None:
        """Send *message* (a pyroute2 nlmsg with its type and flags set) and await its ack.

        Raises:
            OSError: the kernel's error for the request (errno set).
        """
        async with self._lock:
            sock = self._socket()
            self._sequence = self._sequence % 0xFFFFFFFF + 1
            header = message["header"]
            header["sequence_number"] = self._sequence
            header["flags"] |= NLM_F_REQUEST | NLM_F_ACK
            message.encode()
            await sock.send(message.data)
            while True:
                code = _ack(await sock.recv(1 << 16), self._sequence)
                if code is None:
                    continue  # the late ack of a request whose caller was cancelled
                if code:
                    raise OSError(-code, os.strerror(-code))
                return

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _ack(data: bytes, sequence: int) -> int | None:
    """The error code (0: success) of the ack for *sequence* in *data*, or None."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if kind == NLMSG_ERROR and seq == sequence:
            return int(_ERROR_CODE.unpack_from(data, offset + _HEADER.size)[0])
        if length < _HEADER.size:
            break
        offset += (length + 3) & ~3
    return None
