"""Client library for the Corral socket, blocking (:class:`Client`) and trio (:class:`TrioClient`).

Both speak the line protocol of docs/protocol.md and raise
:class:`CorralError` subclasses (from :mod:`supervisor.errors`) for error replies.

    with Client() as c:
        handle = c.create()
        status, out, err = c.run(handle, "echo hello")
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from supervisor import errors

DEFAULT_SOCKET = Path("/run/corral/corral.sock")

_ERRORS: dict[str, type[errors.CorralError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidRequest,
        errors.UnknownCommand,
        errors.UnknownHandle,
        errors.UnknownJob,
        errors.InvalidState,
        errors.LimitExceeded,
        errors.NoCapacity,
    )
}


class CorralError(errors.CorralError):
    """An error reply whose code has no class of its own (e.g. ``internal``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(ConnectionError):
    """The daemon closed the connection before replying."""


def _encode(request: tuple[Any, ...]) -> bytes:
    return json.dumps(list(request), separators=(",", ":")).encode() + b"\n"


def _payload(line: bytes) -> Any:
    reply = json.loads(line)
    if reply.get("type") == "error":
        code, message = reply["payload"]["code"], reply["payload"]["message"]
        cls = _ERRORS.get(code)
        raise cls(message) if cls else CorralError(code, message)
    return reply["payload"]


def _clean(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class _Commands:
    """Request builders shared by both clients."""

    @staticmethod
    def create_request(config: dict[str, Any] | None) -> tuple[Any, ...]:
        return ("create", config) if config else ("create",)


class Client(_Commands):
    """Blocking client; one connection, requests answered in order."""

    def __init__(self, path: Path | str = DEFAULT_SOCKET, timeout: float | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ConnectionClosed("the daemon closed the connection")
        return line

    def call(self, *request: Any) -> Any:
        """Send one request and return its payload."""
        self.sock.sendall(_encode(request))
        return _payload(self._line())

    def ping(self) -> str:
        return self.call("ping")

    def create(self, config: dict[str, Any] | None = None) -> str:
        return self.call(*self.create_request(config))

    def spawn(self, handle: str, script: str, **opts: Any) -> int:
        return self.call("spawn", handle, script, _clean(opts))

    def link(self, handle: str, job_id: int, **opts: Any) -> list[Any]:
        return self.call("link", handle, job_id, _clean(opts))

    def run(self, handle: str, script: str, **opts: Any) -> list[Any]:
        return self.call("run", handle, script, _clean(opts))

    def stream(self, handle: str, job_id: int, **opts: Any) -> Iterator[tuple[str, str]]:
        """Yield ``(name, chunk)`` until the job has ended and its output is drained."""
        self.sock.sendall(_encode(("stream", handle, job_id, _clean(opts))))
        while True:
            line = self._line()
            item = json.loads(line)
            if isinstance(item, list) and item:
                yield item[0], item[1]
            else:
                _payload(line)
                return

    def signal(self, handle: str, job_id: int, signal: int | str, pid: int | None = None) -> str:
        """Send *signal* (a number or a name such as ``"INT"``) to the job's process group,
        or to its process *pid*."""
        return self.call("signal", handle, job_id, signal, _clean({"pid": pid}))

    def stop(self, handle: str, kill: bool = False, background: bool = False) -> str:
        return self.call(
            "stop", handle, _clean({"kill": kill or None, "background": background or None})
        )

    def destroy(self, handle: str) -> str:
        return self.call("destroy", handle)

    def info(self, handle: str) -> dict[str, Any]:
        return self.call("info", handle)

    def list(self, properties: dict[str, str] | None = None) -> list[str]:
        return self.call("list", properties) if properties else self.call("list")

    def pause(self, handle: str) -> str:
        return self.call("pause", handle)

    def resume(self, handle: str) -> str:
        return self.call("resume", handle)

    def events(
        self, handles: Sequence[str] | None = None, kinds: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any] | int]:
        """Yield each event (a dict) or the count of those dropped (an int), as they come,
        until the watched containers are all destroyed; closing the client ends it too."""
        wanted = {"handles": list(handles or ()) or None, "kinds": list(kinds or ()) or None}
        self.sock.sendall(_encode(("events", _clean(wanted))))
        while True:
            line = self._line()
            item = json.loads(line)
            if isinstance(item, list) and item:
                if item[0] != "watching":  # the first line: watched from here on
                    yield item[1]
            else:
                _payload(line)
                return


class TrioClient(_Commands):
    """trio client; open with ``async with await TrioClient.connect(path) as c``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, path: Path | str = DEFAULT_SOCKET) -> TrioClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> TrioClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self._stream.receive_some(65536)
            if not data:
                raise ConnectionClosed("the daemon closed the connection")
            self._buffer += data
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    async def call(self, *request: Any) -> Any:
        await self._stream.send_all(_encode(request))
        return _payload(await self._line())

    async def ping(self) -> str:
        return await self.call("ping")

    async def create(self, config: dict[str, Any] | None = None) -> str:
        return await self.call(*self.create_request(config))

    async def spawn(self, handle: str, script: str, **opts: Any) -> int:
        return await self.call("spawn", handle, script, _clean(opts))

    async def link(self, handle: str, job_id: int, **opts: Any) -> list[Any]:
        return await self.call("link", handle, job_id, _clean(opts))

    async def run(self, handle: str, script: str, **opts: Any) -> list[Any]:
        return await self.call("run", handle, script, _clean(opts))

    async def stream(self, handle: str, job_id: int, **opts: Any) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(name, chunk)`` until the job has ended and its output is drained."""
        await self._stream.send_all(_encode(("stream", handle, job_id, _clean(opts))))
        while True:
            line = await self._line()
            item = json.loads(line)
            if isinstance(item, list) and item:
                yield item[0], item[1]
            else:
                _payload(line)
                return

    async def signal(
        self, handle: str, job_id: int, signal: int | str, pid: int | None = None
    ) -> str:
        """Send *signal* (a number or a name such as ``"INT"``) to the job's process group,
        or to its process *pid*."""
        return await self.call("signal", handle, job_id, signal, _clean({"pid": pid}))

    async def stop(self, handle: str, kill: bool = False, background: bool = False) -> str:
        return await self.call(
            "stop", handle, _clean({"kill": kill or None, "background": background or None})
        )

    async def destroy(self, handle: str) -> str:
        return await self.call("destroy", handle)

    async def info(self, handle: str) -> dict[str, Any]:
        return await self.call("info", handle)

    async def list(self, properties: dict[str, str] | None = None) -> list[str]:
        return await (self.call("list", properties) if properties else self.call("list"))
