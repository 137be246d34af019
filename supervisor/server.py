"""The Unix socket server: one task per connection, line framing with a size cap.

Each connection counts as a reference to every container it created or named;
when it closes, those references are dropped (and grace timers may start).
"""

from __future__ import annotations

import grp
import os
import socket as stdsocket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
import trio

from supervisor.commands import CORE_COMMANDS, Handler, Request
from supervisor.container import Container
from supervisor.errors import CorralError, ProtocolViolation, UnknownCommand
from supervisor.protocol import decode_request, encode_error, encode_reply
from supervisor.registry import Supervisor

log = structlog.get_logger()

RECEIVE_SIZE = 64 * 1024


def unwrap(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups (nurseries wrap what crosses them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class AlreadyServing(RuntimeError):
    """Another daemon answers on the socket path."""


class Connection:
    """One client connection."""

    def __init__(self, stream: trio.SocketStream, server: Server) -> None:
        self.stream = stream
        self.server = server
        self.refs: set[Container] = set()

    def reference(self, container: Container) -> None:
        if container not in self.refs:
            self.refs.add(container)
            container.add_ref()

    async def send(self, line: bytes) -> None:
        await self.stream.send_all(line)

    async def serve(self) -> None:
        """Answer requests in order until the peer closes or breaks the framing."""
        buffer = bytearray()
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
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    buffer += data
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
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            for container in self.refs:
                container.drop_ref()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def answer(self, line: bytes) -> bool:
        """Handle one request line; False when the connection must close."""
        structlog.contextvars.clear_contextvars()
        try:
            name, args = decode_request(line)
            structlog.contextvars.bind_contextvars(command=name)
            handler = self.server.commands.get(name)
            if handler is None:
                raise UnknownCommand(f"unknown command {name!r}")
            payload = await handler(Request(self.server.supervisor, self), *args)
            reply = encode_reply(payload)
        except Exception as exc:
            error = unwrap(exc)
            if isinstance(error, ProtocolViolation):
                await self.send(encode_error(error.code, error.message))
                return False
            if isinstance(error, CorralError):
                log.info("request failed", code=error.code, error=error.message)
                reply = encode_error(error.code, error.message)
            else:
                log.exception("request crashed")
                reply = encode_error("internal", f"{type(error).__name__}: {error}")
        await self.send(reply)
        return True


class Server:
    """Listens on the socket and serves each connection in its own task."""

    def __init__(self, supervisor: Supervisor, extra_commands: dict[str, Handler]) -> None:
        self.supervisor = supervisor
        self.commands = {**extra_commands, **CORE_COMMANDS}

    async def serve(
        self,
        listener: trio.SocketListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(Connection(stream, self).serve)


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
