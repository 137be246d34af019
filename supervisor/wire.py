"""The client's side of the wire: a Unix stream connection that sends JSON lines and reads
them back, on the C pieces the standard library's ``socket`` and ``json`` are made of.

Why not those modules: a short ``corral`` command spends most of its life starting, and
``socket`` (enum, selectors) and ``json`` (re, for its pure-Python fallback) cost more to
import than the whole request. ``_socket`` and ``_json`` are what they wrap; the JSON is
the same: ``_json``'s scanner and encoder are what ``json.loads``/``json.dumps`` run.
Where ``_json`` is missing (another Python), ``json`` itself is used.
"""

from __future__ import annotations

import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - every CPython has it
    _json = None  # type: ignore[assignment]


class _ScanContext:
    """What ``_json.make_scanner`` reads from a decoder: strict JSON, plain dicts."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")  # the daemon never sends NaN or Infinity


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


if _json is not None:
    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # a duck of JSONDecoder
    # As json.dumps(separators=(",", ":")) builds it: ASCII output, NaN refused.
    _encode = _json.make_encoder(
        None, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def dumps(value: Any) -> str:
        """``json.dumps(value, separators=(",", ":"))``."""
        return "".join(_encode(value, 0))

    def loads(text: str) -> Any:
        """``json.loads(text)`` of one JSON value (surrounding blanks allowed)."""
        try:
            value, end = _scan(text, len(text) - len(text.lstrip()))
        except StopIteration as exc:
            raise ValueError(f"not JSON at character {exc.value}: {text[:80]!r}") from None
        if text[end:].strip():
            raise ValueError(f"extra data after the JSON value: {text[:80]!r}")
        return value

else:  # pragma: no cover
    import json

    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    def loads(text: str) -> Any:
        return json.loads(text)


def encode(request: Any) -> bytes:
    """A request line."""
    return dumps(request).encode() + b"\n"


def decode(line: bytes) -> Any:
    return loads(line.decode("utf-8"))


class Connection:
    """A connected Unix stream socket read line by line.

    ``sock`` is the ``_socket.socket`` (``sendall``, ``recv``, ``settimeout``, ``fileno``);
    a timeout raises ``TimeoutError``, as with ``socket``.
    """

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise
        self._buffer = bytearray()

    def send(self, request: Any) -> None:
        self.sock.sendall(encode(request))

    def readline(self) -> bytes:
        """The next line with its newline, or what is left (``b""``) once the peer closed."""
        buffer = self._buffer
        start = 0
        while (end := buffer.find(b"\n", start)) < 0:
            start = len(buffer)
            data = self.sock.recv(65536)
            if not data:
                line = bytes(buffer)
                buffer.clear()
                return line
            buffer += data
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        return line

    def read(self, size: int) -> bytes:
        """The next *size* bytes, or fewer once the peer closed."""
        buffer = self._buffer
        while len(buffer) < size:
            data = self.sock.recv(max(65536, size - len(buffer)))
            if not data:
                break
            buffer += data
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def close(self) -> None:
        self.sock.close()
