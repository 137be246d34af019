"""Wire format: one JSON array per request line, one JSON object per reply line.

See docs/protocol.md for the contract. Replies are encoded with ``ensure_ascii``
so that output bytes carried as surrogates (see :func:`encode_output`)
always travel as valid UTF-8.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

from supervisor.errors import InvalidRequest, ProtocolViolation

#: Deepest nesting of arrays and objects a request may have: commands need three
#: levels; the JSON decoder (and encoder) recurse, and would fail near a thousand.
MAX_DEPTH = 32
#: A ``\uD800``-``\uDFFF`` escape: the only way a JSON text can carry a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[][{}]")


class _NotJson(ValueError):
    """A number JSON cannot carry: NaN, Infinity, or one too large for a float."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"number {text} is out of range")
    return value


_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def _depth(line: bytes) -> int:
    """How deep arrays and objects nest in the JSON text *line* (brackets in strings skipped)."""
    deepest = depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", line)):
        depth += 1 if match[0] in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _check_strings(value: Any) -> None:
    """Refuse a string with a lone surrogate other than U+DC80-U+DCFF (a raw byte).

    Those stand for the bytes 0x80-0xff, as in output (``surrogateescape``); any
    other cannot become bytes for a path, an environment or a script.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(
                    f"string {item[:40]!r} holds the lone surrogate {item[exc.start]!r} at "
                    f"character {exc.start}: only \\udc80-\\udcff (one raw byte each) may appear"
                ) from None
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())


def decode_request(line: bytes) -> tuple[str, list[Any]]:
    """Split a request line into command name and arguments.

    Raises:
        ProtocolViolation: the line is not UTF-8 or not JSON (the connection closes).
        InvalidRequest: the JSON is not an array starting with a command name.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolViolation(f"request is not valid UTF-8 at byte {exc.start}") from exc
    # Counting brackets is cheap; the exact depth is scanned only when they could nest too deep.
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _depth(line) > MAX_DEPTH:
        raise InvalidRequest(f"request nests arrays and objects deeper than {MAX_DEPTH} levels")
    try:
        request = _decode(text)
    except _NotJson as exc:
        raise InvalidRequest(f"request is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise ProtocolViolation(f"request is not valid JSON: {exc}") from exc
    if _SURROGATE_ESCAPE.search(line):
        _check_strings(request)
    if not isinstance(request, list) or not request:
        raise InvalidRequest("request must be a non-empty JSON array: [COMMAND, ARGS...]")
    name, *args = request
    if not isinstance(name, str):
        raise InvalidRequest(f"command name must be a string, got {json.dumps(name)}")
    return name, args


#: What ``json.dumps(obj, separators=(",", ":"))`` uses, built once: dumps makes a
#: new encoder on every call that passes options.
#: ``allow_nan=False``: NaN and Infinity are not JSON; a reply holding one is a bug (``internal``).
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_line(obj: Any) -> bytes:
    """One line of JSON (an extra reply line of ``stream`` or ``events``)."""
    return _encode(obj).encode("ascii") + b"\n"


def encode_reply(payload: Any) -> bytes:
    """A success reply line: ``{"type":"object","payload":PAYLOAD}``."""
    return b'{"type":"object","payload":' + _encode(payload).encode("ascii") + b"}\n"


def encode_error(code: str, message: str) -> bytes:
    """An error reply line."""
    return encode_line({"type": "error", "payload": {"code": code, "message": message}})


def encode_output(data: bytes, encoding: str) -> str:
    """Job output as a JSON string: UTF-8 (undecodable bytes kept as surrogates) or base64."""
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", "surrogateescape")


def decode_input(text: str, encoding: str, command: str) -> bytes:
    """A client's bytes from a JSON string: UTF-8 (lone surrogates back to their bytes) or base64."""
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            raise InvalidRequest(f"{command}: DATA is not base64") from None
    return text.encode("utf-8", "surrogateescape")


#: Most bytes of one intermediate ``stream`` line: what a reader that stopped reading
#: keeps in the daemon's memory (the socket's own buffer aside).
STREAM_LINE_BUDGET = 128 * 1024


def stream_chunk_size(encoding: str) -> int:
    """Output bytes per ``stream`` line, so that the line stays within :data:`STREAM_LINE_BUDGET`.

    Base64 makes 4 bytes of 3; as JSON text a byte takes up to 6 (``\\u0000``, ``\\udcff``).
    """
    if encoding == "raw":
        return STREAM_LINE_BUDGET
    return STREAM_LINE_BUDGET * 3 // 4 if encoding == "base64" else STREAM_LINE_BUDGET // 6


def encode_stream_chunk(stream: str, chunk: bytes, encoding: str) -> bytes:
    """One intermediate ``stream`` line: ``["stdout", CHUNK]``.

    Base64 needs no JSON escaping, so that line is put together directly. ``raw``:
    ``["stdout",N]`` and the N bytes themselves after the line, as the job wrote them
    (nothing to encode or decode: the fast path for clients that stream a lot).
    """
    if encoding == "raw":
        return b'["%s",%d]\n' % (stream.encode(), len(chunk)) + chunk
    if encoding == "base64":
        return b'["' + stream.encode() + b'","' + base64.b64encode(chunk) + b'"]\n'
    return encode_line([stream, encode_output(chunk, encoding)])


# -- argument checking ---------------------------------------------------------


class Args:
    """Positional arguments of one request, checked one by one with clear messages."""

    def __init__(self, command: str, args: list[Any], names: tuple[str, ...]) -> None:
        if len(args) > len(names):
            raise InvalidRequest(
                f"{command}: takes at most {len(names)} arguments ({', '.join(names)}), got {len(args)}"
            )
        self.command = command
        self._args = args
        self._names = names

    def value(self, index: int, required: bool = True) -> Any:
        """Argument *index* of any JSON type (None when absent and not required)."""
        if index < len(self._args):
            return self._args[index]
        if required:
            raise InvalidRequest(f"{self.command}: missing argument {self._names[index]}")
        return None

    def string(self, index: int, required: bool = True) -> Any:
        value = self.value(index, required)
        if (value is not None or required) and not isinstance(value, str):
            raise InvalidRequest(
                f"{self.command}: {self._names[index]} must be a string, got {json.dumps(value)}"
            )
        return value

    def integer(self, index: int) -> int:
        value = self.value(index, True)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(
                f"{self.command}: {self._names[index]} must be an integer, got {json.dumps(value)}"
            )
        return value

    def options(self, index: int, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
        """An optional object whose keys must be in *allowed*, with values of those types."""
        value = self.value(index, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidRequest(
                f"{self.command}: {self._names[index]} must be an object, got {json.dumps(value)}"
            )
        for key, item in value.items():
            if key not in allowed:
                raise InvalidRequest(
                    f"{self.command}: unknown option {key!r} (known: {', '.join(sorted(allowed))})"
                )
            kinds = allowed[key]
            if not isinstance(item, kinds) or (
                isinstance(item, bool) and bool not in _as_tuple(kinds)
            ):
                raise InvalidRequest(
                    f"{self.command}: option {key} has the wrong type: {json.dumps(item)}"
                )
        return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)
