"""Client library for the Corral socket, blocking (:class:`Client`) and trio (:class:`TrioClient`).

Both speak the line protocol of docs/protocol.md and raise
:class:`CorralError` subclasses (from :mod:`supervisor.errors`) for error replies.

    with Client() as c:
        handle = c.create()
        status, out, err = c.run(handle, "echo hello")
        job = c.popen(handle, "cat", stdin=True)  # like subprocess.Popen
        job.write(b"hi"); job.close_stdin()
        assert job.wait() == 0 and job.stdout == b"hi"
"""

from __future__ import annotations

from supervisor import errors, wire

# The typing names only for mypy: a short-lived ``corral`` pays for every import (wire.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
    from pathlib import Path
    from types import TracebackType
    from typing import Any

    # Imported when a TrioClient connects: trio takes ~90 ms to import, which every
    # short-lived blocking client (a CI driver runs one per stage) would pay for nothing.
    import trio

DEFAULT_SOCKET = "/run/corral/corral.sock"

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
    return wire.encode(list(request))


#: How a progress line of ``image-pull`` and ``image-import`` starts (the daemon writes it so).
PROGRESS_PREFIX = b'["progress",'


def _payload(line: bytes) -> Any:
    reply = wire.decode(line)
    if reply.get("type") == "error":
        code, message = reply["payload"]["code"], reply["payload"]["message"]
        cls = _ERRORS.get(code)
        raise cls(message) if cls else CorralError(code, message)
    return reply["payload"]


def _b64decode(data: str) -> bytes:
    import base64  # only for the requests that use it

    return base64.b64decode(data)


def _clean(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class _Commands:
    """Request builders shared by both clients."""

    @staticmethod
    def create_request(config: dict[str, Any] | None) -> tuple[Any, ...]:
        return ("create", config) if config else ("create",)


def _stdin_request(handle: str, job_id: int, data: bytes | str | None) -> tuple[Any, ...]:
    if data is None:
        return ("stdin", handle, job_id, None)
    import base64

    raw = data.encode() if isinstance(data, str) else data
    return ("stdin", handle, job_id, base64.b64encode(raw).decode(), {"encoding": "base64"})


class JobProcess:
    """A job as :class:`subprocess.Popen` is a process: write its stdin, read its output as
    it comes, wait for it, signal it, resize its terminal (:meth:`Client.popen` makes one).

    Requests go on the client that spawned it; output is read on a connection of the
    job's own, so a reader and a writer do not wait for each other.
    """

    def __init__(self, client: Client, handle: str, job_id: int) -> None:
        self.client = client
        self.handle = handle
        self.id = job_id
        #: The exit status once :meth:`wait` returned (128+N when killed by signal N).
        self.returncode: int | None = None
        #: ``{"exit_code", "signal", "killed_by"}`` and ``{"cpu_user", ...}`` after wait().
        self.ended: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.stdout: bytes | None = None
        self.stderr: bytes | None = None
        self._reader: Client | None = None

    def write(self, data: bytes | str) -> None:
        """Write to the job's stdin; returns once the job has taken it all."""
        self.client.call(*_stdin_request(self.handle, self.id, data))

    def close_stdin(self) -> None:
        """EOF on the job's stdin (^D on a terminal)."""
        self.client.call(*_stdin_request(self.handle, self.id, None))

    def output(self) -> Iterator[tuple[str, bytes]]:
        """Yield ``(stream, bytes)`` as the job writes, from the first byte, until it ended."""
        if self._reader is None:
            self._reader = Client(self.client.path, self.client.timeout)
        for name, chunk in self._reader.stream_bytes(self.handle, self.id):
            if name != "cut":  # ["cut", STREAM]: the output limit (ended.killed_by tells)
                yield name, chunk

    def wait(self) -> int | None:
        """Wait for the job's end; its status. Its output is then in :attr:`stdout`/:attr:`stderr`
        (the daemon forgets the job)."""
        if self.ended is None:
            status, out, err, report = self.client.link(
                self.handle, self.id, encoding="base64", ended=True, usage=True
            )
            self.returncode, self.ended, self.usage = status, report["ended"], report["usage"]
            self.stdout = None if out is None else _b64decode(out)
            self.stderr = None if err is None else _b64decode(err)
            self.close()
        return self.returncode

    def send_signal(self, signal: int | str, pid: int | None = None) -> None:
        """Signal the job's process group (or its process *pid*)."""
        self.client.signal(self.handle, self.id, signal, pid)

    def terminate(self) -> None:
        self.send_signal("TERM")

    def kill(self) -> None:
        self.send_signal("KILL")

    def resize(self, rows: int, cols: int) -> None:
        """Set the size of the job's terminal."""
        self.client.call("resize", self.handle, self.id, rows, cols)

    def close(self) -> None:
        """Close the output connection (the job runs on)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class Client(_Commands):
    """Blocking client; one connection, requests answered in order."""

    def __init__(self, path: Path | str = DEFAULT_SOCKET, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        #: The connection (``readline()``) and its socket (``sendall``...).
        self.file = wire.Connection(str(path), timeout)
        self.sock = self.file.sock

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise ConnectionClosed("the daemon closed the connection")
        return line

    def call(self, *request: Any) -> Any:
        """Send one request and return its payload (progress lines before it are skipped)."""
        return self.call_with_progress(*request)

    def call_with_progress(
        self, *request: Any, progress: Callable[[str], None] | None = None
    ) -> Any:
        """Send a request that reports ``["progress", TEXT]`` lines (``image-import``,
        ``image-pull``) before its reply; give each to *progress*; return the payload."""
        self.sock.sendall(_encode(request))
        while True:
            line = self._line()
            if line.startswith(PROGRESS_PREFIX):
                if progress is not None:
                    progress(str(wire.decode(line)[1]))
                continue
            return _payload(line)

    def ping(self) -> str:
        return self.call("ping")

    def create(self, config: dict[str, Any] | None = None) -> str:
        return self.call(*self.create_request(config))

    def spawn(self, handle: str, script: str, **opts: Any) -> int:
        return self.call("spawn", handle, script, _clean(opts))

    def link(self, handle: str, job_id: int, **opts: Any) -> list[Any]:
        return self.call("link", handle, job_id, _clean(opts))

    def run(
        self,
        handle: str,
        script: str,
        output: Callable[[str, bytes], None] | None = None,
        **opts: Any,
    ) -> list[Any]:
        """Run SCRIPT to its end: ``[status, stdout, stderr]`` (a fourth item with
        ``info``/``ended``/``usage``). With *output*, it is called with ``(stream, bytes)`` as the job
        writes, instead of the output being held back to the end."""
        if output is None:
            return self.call("run", handle, script, _clean(opts))
        link_opts = {k: opts.pop(k) for k in ("encoding", "ended", "usage", "info") if k in opts}
        job_id = self.spawn(handle, script, **opts)
        for name, chunk in self.stream_bytes(handle, job_id):
            if name != "cut":  # ["cut", STREAM]: link's status 137 tells
                output(name, chunk)
        return self.link(handle, job_id, **link_opts)

    def popen(self, handle: str, script: str, **opts: Any) -> JobProcess:
        """Spawn SCRIPT (OPTS as ``spawn``'s: ``stdin=True``, ``tty={"rows": R, "cols": C}``...)
        and return it as a :class:`JobProcess`."""
        return JobProcess(self, handle, self.spawn(handle, script, **opts))

    def stream(
        self, handle: str, job_id: int, **opts: Any
    ) -> Generator[tuple[str, str], None, Any]:
        """Yield ``(name, chunk)`` until the job has ended and its output is drained; the
        generator's value is the final payload (``{"status": ..., "ended": ...}`` when asked)."""
        self.sock.sendall(_encode(("stream", handle, job_id, _clean(opts))))
        while True:
            line = self._line()
            item = wire.decode(line)
            if isinstance(item, list) and item:
                yield item[0], item[1]
            else:
                return _payload(line)

    def stream_bytes(
        self, handle: str, job_id: int, **opts: Any
    ) -> Generator[tuple[str, bytes], None, Any]:
        """:meth:`stream` in the ``raw`` encoding: ``(name, bytes)`` as the job wrote them
        (``("cut", b"stdout")`` at the output limit); the generator's value is the final
        payload, as :meth:`stream`'s."""
        self.sock.sendall(_encode(("stream", handle, job_id, {**_clean(opts), "encoding": "raw"})))
        while True:
            line = self._line()
            item = wire.decode(line)
            if not (isinstance(item, list) and item):
                return _payload(line)
            if isinstance(item[1], int):
                data = self.file.read(item[1])
                if len(data) < item[1]:
                    raise ConnectionClosed("the daemon closed the connection mid-chunk")
                yield item[0], data
            else:
                yield item[0], str(item[1]).encode()

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
            item = wire.decode(line)
            if isinstance(item, list) and item:
                if item[0] != "watching":  # the first line: watched from here on
                    yield item[1]
            else:
                _payload(line)
                return


class TrioJobProcess:
    """:class:`JobProcess` for trio: the same methods, awaited."""

    def __init__(self, client: TrioClient, handle: str, job_id: int) -> None:
        self.client = client
        self.handle = handle
        self.id = job_id
        self.returncode: int | None = None
        self.ended: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.stdout: bytes | None = None
        self.stderr: bytes | None = None

    async def write(self, data: bytes | str) -> None:
        await self.client.call(*_stdin_request(self.handle, self.id, data))

    async def close_stdin(self) -> None:
        await self.client.call(*_stdin_request(self.handle, self.id, None))

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``(stream, bytes)`` as the job writes, on a connection of its own."""
        async with await TrioClient.connect(self.client.path) as reader:
            async for name, chunk in reader.stream_bytes(self.handle, self.id):
                if name != "cut":  # the output limit: ended.killed_by tells
                    yield name, chunk

    async def wait(self) -> int | None:
        if self.ended is None:
            status, out, err, report = await self.client.link(
                self.handle, self.id, encoding="base64", ended=True, usage=True
            )
            self.returncode, self.ended, self.usage = status, report["ended"], report["usage"]
            self.stdout = None if out is None else _b64decode(out)
            self.stderr = None if err is None else _b64decode(err)
        return self.returncode

    async def send_signal(self, signal: int | str, pid: int | None = None) -> None:
        await self.client.signal(self.handle, self.id, signal, pid)

    async def terminate(self) -> None:
        await self.send_signal("TERM")

    async def kill(self) -> None:
        await self.send_signal("KILL")

    async def resize(self, rows: int, cols: int) -> None:
        await self.client.call("resize", self.handle, self.id, rows, cols)


class TrioClient(_Commands):
    """trio client; open with ``async with await TrioClient.connect(path) as c``."""

    def __init__(self, stream: trio.SocketStream, path: Path | str = DEFAULT_SOCKET) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.path = path

    @classmethod
    async def connect(cls, path: Path | str = DEFAULT_SOCKET) -> TrioClient:
        import trio

        return cls(await trio.open_unix_socket(str(path)), path)

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
        """Send one request and return its payload (progress lines before it are skipped)."""
        await self._stream.send_all(_encode(request))
        while (line := await self._line()).startswith(PROGRESS_PREFIX):
            pass
        return _payload(line)

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
            item = wire.decode(line)
            if isinstance(item, list) and item:
                yield item[0], item[1]
            else:
                _payload(line)
                return

    async def stream_bytes(
        self, handle: str, job_id: int, **opts: Any
    ) -> AsyncIterator[tuple[str, bytes]]:
        """:meth:`stream` in the ``raw`` encoding: ``(name, bytes)`` as the job wrote them."""
        request = ("stream", handle, job_id, {**_clean(opts), "encoding": "raw"})
        await self._stream.send_all(_encode(request))
        while True:
            line = await self._line()
            item = wire.decode(line)
            if not (isinstance(item, list) and item):
                _payload(line)
                return
            if isinstance(item[1], int):
                yield item[0], await self._exactly(item[1])
            else:
                yield item[0], str(item[1]).encode()

    async def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            if not data:
                raise ConnectionClosed("the daemon closed the connection mid-chunk")
            self._buffer += data
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def signal(
        self, handle: str, job_id: int, signal: int | str, pid: int | None = None
    ) -> str:
        """Send *signal* (a number or a name such as ``"INT"``) to the job's process group,
        or to its process *pid*."""
        return await self.call("signal", handle, job_id, signal, _clean({"pid": pid}))

    async def popen(self, handle: str, script: str, **opts: Any) -> TrioJobProcess:
        """Spawn SCRIPT (OPTS as ``spawn``'s) and return it as a :class:`TrioJobProcess`."""
        return TrioJobProcess(self, handle, await self.spawn(handle, script, **opts))

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
