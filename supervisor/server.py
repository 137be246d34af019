"""The Unix socket server: one task per connection, line framing with a size cap.

After a ping, a connection's task waits for the next request in the :class:`Poller`,
which answers a lone ``["ping"]`` itself: the hot path costs a recv and a send.

Each connection counts as a reference to every container it created or named;
when it closes, those references are dropped (and grace timers may start).
"""

from __future__ import annotations

import grp
import os
import select
import socket as stdsocket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
import trio

from supervisor.api import Handler
from supervisor.commands import CORE_COMMANDS, Request
from supervisor.container import Container
from supervisor.credentials import Credentials, peer_credentials
from supervisor.errors import CorralError, ProtocolViolation, UnknownCommand
from supervisor.protocol import decode_request, encode_error, encode_reply
from supervisor.registry import Supervisor

log = structlog.get_logger()

RECEIVE_SIZE = 64 * 1024
#: Seconds between checks for a client that closed while its request runs, when the
#: socket cannot tell by readability (see :meth:`Connection.hung_up`).
HANGUP_POLL = 0.5
#: What a request is counted as before its command is known to exist.
INVALID, UNKNOWN = "(invalid)", "(unknown)"


def unwrap(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups (nurseries wrap what crosses them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class AlreadyServing(RuntimeError):
    """Another daemon answers on the socket path."""


#: The most frequent request, answered without JSON, a handler or a log context.
PING = b'["ping"]'
PING_LINE = PING + b"\n"
PONG = encode_reply("pong")


class Poller:
    """Watches the connections waiting for their next request, in one epoll set of its own.

    A connection's task parks here after a ping, until its next request. A lone
    ``["ping"]`` is answered on the spot; any other input wakes the task. So a ping
    costs a recv and a send: no task switch, and no epoll_ctl (trio re-arms an fd on
    every wait of a task). Handing other requests over costs more than that saves,
    so after one of them the task waits for the next request itself.
    """

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.parked: dict[int, Connection] = {}

    async def park(self, connection: Connection) -> None:
        """Wait until *connection* has input (or lost its client) that its task must handle."""
        fd = connection.sock.fileno()
        connection.wake = trio.Event()
        self.epoll.register(fd, select.EPOLLIN)
        self.parked[fd] = connection
        try:
            await connection.wake.wait()
        finally:
            self.release(fd)

    def release(self, fd: int) -> None:
        if self.parked.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    async def run(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.epoll.fileno())
            for fd, _ in self.epoll.poll(0):
                connection = self.parked[fd]
                if not connection.answer_ping():
                    self.release(fd)
                    connection.wake.set()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.epoll.fileno())
        self.epoll.close()


class Connection:
    """One client connection, served on its plain non-blocking socket.

    trio's SocketStream yields to the scheduler on every send and receive and tries a
    receive before each wait; here a request costs at most one wait, one recv and one send.
    """

    def __init__(self, sock: stdsocket.socket, server: Server, credentials: Credentials) -> None:
        self.sock = sock
        self.server = server
        #: The client's, from the socket at accept (see :mod:`supervisor.credentials`).
        self.credentials = credentials
        self.refs: set[Container] = set()
        self.request = Request(server.supervisor, self)
        self.buffer = bytearray()  # received, not answered yet
        self.pending: list[bytes] = []  # replies not sent yet, in order
        self.eof = False  # the client closed or broke the connection
        self.broken = False  # a send failed: the client is gone, nothing more can reach it
        self.pinged = False  # the last request was a ping: wait for the next in the poller
        self.wake = trio.Event()  # set by the poller when a parked task has work

    def reference(self, container: Container) -> None:
        if container not in self.refs:
            self.refs.add(container)
            container.add_ref()

    async def send(self, line: bytes) -> None:
        """Send *line* after the pending replies (a handler's extra lines: ``stream``).

        A checkpoint, like trio's send_all: a handler that sends in a loop must not
        starve the other connections while the socket has room.
        """
        self.pending.append(line)
        await self.flush()
        await trio.lowlevel.checkpoint()

    def send_now(self, data: bytes) -> int:
        """Write what the socket takes of *data* without waiting, when nothing is pending.

        Returns how much was written (0 when it would block, or the client is gone:
        the next :meth:`send` says which).
        """
        if self.pending:
            return 0
        try:
            return self.sock.send(data)
        except OSError:
            return 0

    async def flush(self) -> None:
        """Send the pending replies in one write, waiting only while the socket is full."""
        if not self.pending:
            return
        data = memoryview(b"".join(self.pending))
        self.pending.clear()
        try:
            while data:
                try:
                    data = data[self.sock.send(data) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
        except OSError as exc:  # as SocketStream.send_all reports it to handlers
            self.broken = True
            raise trio.BrokenResourceError(f"client went away: {exc}") from exc

    def answer_ping(self) -> bool:
        """For the poller: receive; True if that was a lone ping, now answered.

        False leaves the task to deal with what came: data in the buffer, an
        unsent reply in pending, or eof.
        """
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if data != PING_LINE:
            self.buffer.extend(data)
            self.eof = not data
            return False
        try:
            sent = self.sock.send(PONG)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.eof = True
            return False
        self.server.stats.pings += 1
        if sent < len(PONG):
            self.pending.append(PONG[sent:])
            return False
        return True

    async def input(self) -> None:
        """Wait until the client sends more, or closes (what came stays in the buffer)."""
        if not self.buffer and not self.eof:
            await trio.lowlevel.wait_readable(self.sock)

    async def hung_up(self) -> None:
        """Return once the client has closed the connection entirely (a long handler's
        client killed, say): a half-close (it shut down its writing side) is not one, as
        it may still read the reply. What it sends meanwhile is kept for after the handler.

        On readability (the common case, no input pending: no cost until then); with
        input pending or after a half-close, the socket stays readable: then every
        :data:`HANGUP_POLL` seconds.
        """
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP)
        while True:
            if self.buffer or self.eof:
                await trio.sleep(HANGUP_POLL)
            else:
                await trio.lowlevel.wait_readable(self.sock)
                self._take()
            if any(events & select.POLLHUP for _, events in poller.poll(0)):
                return

    async def receive(self) -> None:
        """Add the client's next bytes to the buffer, or set eof."""
        if self.pinged and not self.buffer:
            await self.server.poller.park(self)  # between requests: see Poller
            return
        await trio.lowlevel.wait_readable(self.sock)
        self._take()

    def _take(self) -> None:
        """Add what the socket holds to the buffer, or set eof (a reset is an end too)."""
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.buffer.extend(data)
        self.eof = not data

    async def serve(self) -> None:
        """Answer requests in order until the peer closes or breaks the framing."""
        buffer = self.buffer  # the same bytearray, which receive() and the poller extend
        scanned = 0
        limit = self.server.supervisor.config.daemon.max_line_bytes
        try:
            while True:
                end = buffer.find(b"\n", scanned)
                if end < 0:
                    scanned = len(buffer)
                    if len(buffer) > limit:
                        await self.send(
                            encode_error(
                                "invalid_request", f"request line longer than {limit} bytes"
                            )
                        )
                        return
                    # Every complete line is answered: their replies go out in one write.
                    await self.flush()
                    if self.eof:
                        return
                    await self.receive()
                    continue
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                scanned = 0
                if len(line) > limit:
                    await self.send(
                        encode_error("invalid_request", f"request line longer than {limit} bytes")
                    )
                    return
                if not line.strip():
                    continue
                if not await self.answer(line):
                    await self.flush()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            for container in self.refs:
                container.drop_ref()
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def answer(self, line: bytes) -> bool:
        """Queue the reply to one request line; False when the connection must close."""
        self.pinged = line == PING
        if self.pinged:
            self.server.stats.pings += 1
            self.pending.append(PONG)
            return True
        # A handler may block (link, stop...): the replies before it go out first.
        await self.flush()
        structlog.contextvars.clear_contextvars()
        started = time.perf_counter()
        # Counted under its name only once known: clients choose what they send.
        command, failed = INVALID, True
        try:
            name, args = decode_request(line)
            structlog.contextvars.bind_contextvars(command=name)
            handler = self.server.commands.get(name)
            if handler is None:
                command = UNKNOWN
                raise UnknownCommand(f"unknown command {name!r}")
            command = name
            payload = await handler(self.request, *args)
            reply = encode_reply(payload)
            failed = False
        except Exception as exc:
            if self.broken:  # the client left mid-reply (a stream reader): no one to answer
                raise trio.BrokenResourceError("client went away") from None
            error_reply = self._error_reply(unwrap(exc))
            if error_reply is None:
                return False
            reply = error_reply
        finally:
            self.server.stats.record(command, time.perf_counter() - started, failed)
        self.pending.append(reply)
        return True

    def _error_reply(self, error: BaseException) -> bytes | None:
        """The reply to a request that raised *error*; None for a ProtocolViolation, whose
        reply is queued and which closes the connection.

        A method of its own: a local of :meth:`answer` holding the error would make a
        cycle with the traceback (which holds that frame, and the handler's, with its
        output chunks), kept until the next garbage collection.
        """
        if isinstance(error, ProtocolViolation):
            self.pending.append(encode_error(error.code, error.message))
            return None
        if isinstance(error, CorralError):
            log.info("request failed", code=error.code, error=error.message)
            return encode_error(error.code, error.message)
        log.error("request crashed", exc_info=error)
        return encode_error("internal", f"{type(error).__name__}: {error}")


class Server:
    """Listens on the socket and serves each connection in its own task."""

    def __init__(self, supervisor: Supervisor, extra_commands: dict[str, Handler]) -> None:
        self.supervisor = supervisor
        self.commands = {**extra_commands, **CORE_COMMANDS}
        self.poller = Poller()
        self.stats = supervisor.requests

    async def serve(
        self,
        listener: trio.SocketListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.poller.run)
                task_status.started()
                while True:
                    # Served on the plain socket: trio's stream layer costs more than a
                    # request (a SocketStream also tries TCP options on each connection).
                    accepted, _ = await listener.socket.accept()
                    sock = stdsocket.socket(
                        stdsocket.AF_UNIX, stdsocket.SOCK_STREAM, 0, accepted.detach()
                    )
                    sock.setblocking(False)
                    try:
                        credentials = peer_credentials(sock)
                    except OSError as exc:  # the client is gone already
                        log.info("connection dropped at accept", error=str(exc))
                        sock.close()
                        continue
                    nursery.start_soon(Connection(sock, self, credentials).serve)
        finally:
            self.poller.close()  # every connection task has ended


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


async def open_listener(path: Path, group: str | None) -> trio.SocketListener:
    """Bind the control socket: 0600 root, or 0660 for *group*; replace a stale socket.

    Raises:
        AlreadyServing: a live daemon answers on *path*.
    """
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody answers: a dead daemon's socket
        else:
            raise AlreadyServing(f"another corrald is serving {path}")
        finally:
            probe.close()
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    with _umask(0o177):
        await sock.bind(str(path))
    if group:
        os.chown(path, 0, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
    sock.listen(512)
    return trio.SocketListener(sock)
