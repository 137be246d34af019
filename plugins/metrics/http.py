"""A small HTTP/1.x server for the metrics: ``GET /metrics`` and nothing else.

Written for this one page rather than taken from ``prometheus_client``'s
``start_http_server``, which runs a thread server calling the collectors from
its own threads: here a scrape reads the daemon on the daemon's event loop.
Every connection is one request (``Connection: close``) in a task of its own,
bounded in time (:data:`CONNECTION_TIMEOUT`) and in the size of what it reads
(:data:`MAX_HEAD`, no body read); past :data:`MAX_CONNECTIONS` at once, a new
connection is closed at once. A stuck or hostile local client can then hold a
few small buffers for a few seconds, never pile up tasks.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

from plugins.metrics.settings import NAME, Address

log = structlog.get_logger().bind(plugin=NAME)

#: The largest request line and headers read (Prometheus sends about 300 bytes).
MAX_HEAD = 8192
#: Seconds a client has to send its request.
HEAD_TIMEOUT = 5.0
#: Seconds a connection may last in all: request, collection, reply.
CONNECTION_TIMEOUT = 30.0
#: Connections served at once; scrapers are a few.
MAX_CONNECTIONS = 16
#: Connections the kernel holds until they are accepted: a burst waits, it is not dropped.
BACKLOG = 64
PATH = "/metrics"

#: The page: its body, made when asked.
Page = Callable[[], Awaitable[bytes]]


def bind(address: Address) -> socket.socket:
    """A listening TCP socket on *address*, non-blocking (``OSError`` when it cannot be had).

    Bound when the daemon starts, before it serves anything, so that an address
    in use stops it with a clear message instead of failing later in a task.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)  # not inherited by children
    try:
        # A restarted daemon can bind again while the old connections linger in TIME_WAIT;
        # a socket listening there still makes bind fail (no SO_REUSEPORT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _response(status: str, headers: dict[str, str], body: bytes, send_body: bool = True) -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode("ascii") + (body if send_body else b"")


def _plain(status: str, text: str, extra: dict[str, str] | None = None) -> bytes:
    headers = {"Content-Type": "text/plain; charset=utf-8", **(extra or {})}
    return _response(status, headers, text.encode() + b"\n")


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request line and headers; None when the client closed first.

    Raises:
        ValueError: longer than :data:`MAX_HEAD`.
    """
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            end = data.find(b"\n\n")  # bare newlines, as some tools send
        if end >= 0:
            return bytes(data[:end])
        if len(data) > MAX_HEAD:
            raise ValueError("request head too large")
        chunk = await stream.receive_some(MAX_HEAD + 1 - len(data))
        if not chunk:
            return None
        data += chunk


async def answer(head: bytes, page: Page, content_type: str) -> bytes:
    """The whole response to a request whose line and headers are *head*."""
    request_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _plain("400 Bad Request", "bad request line")
    method, target, _ = parts
    if target.split("?", 1)[0] != PATH:
        return _plain("404 Not Found", f"not found; the metrics are at {PATH}")
    if method not in ("GET", "HEAD"):
        return _plain("405 Method Not Allowed", "only GET", {"Allow": "GET, HEAD"})
    body = await page()
    return _response("200 OK", {"Content-Type": content_type}, body, send_body=method == "GET")


async def serve(sock: socket.socket, page: Page, content_type: str) -> None:
    """Serve ``GET /metrics`` on the listening *sock* with *page* until cancelled."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    open_connections = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal open_connections
        async with stream:
            if open_connections >= MAX_CONNECTIONS:
                return  # closed at once: nothing is read, nothing is kept
            open_connections += 1
            try:
                with trio.move_on_after(CONNECTION_TIMEOUT):
                    await _exchange(stream, page, content_type)
            finally:
                open_connections -= 1

    await trio.serve_listeners(connection, [listener])


async def _exchange(stream: trio.SocketStream, page: Page, content_type: str) -> None:
    """Read one request, send its response, and say no more (the caller closes)."""
    try:
        head: bytes | None = None
        with trio.move_on_after(HEAD_TIMEOUT):
            try:
                head = await _read_head(stream)
            except ValueError:
                await stream.send_all(_plain("431 Request Header Fields Too Large", "too large"))
                return
        if head is None:  # closed, or too slow: no answer
            return
        try:
            response = await answer(head, page, content_type)
        except Exception:
            log.exception("metrics scrape failed")
            response = _plain("500 Internal Server Error", "the metrics could not be read")
        await stream.send_all(response)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client left
