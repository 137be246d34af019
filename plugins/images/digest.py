"""Digests checked while bytes stream, and layer decompression (gzip, zstd, plain)."""

from __future__ import annotations

import gzip
import hashlib
import re
from typing import IO

import zstandard

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DigestError(Exception):
    """Bytes did not match the digest (or the size) they were announced with."""


def check_digest(value: object, what: str) -> str:
    """*value* if it is a ``sha256:HEX`` digest (the only algorithm accepted)."""
    if not isinstance(value, str) or not DIGEST.match(value):
        raise DigestError(f"{what}: {value!r} is not a sha256 digest")
    return value


class HashingReader:
    """A reader that hashes what passes through it; :meth:`verify` checks the whole."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.raw.read(n)
        self.hash.update(chunk)
        self.size += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read what is left (a tar's trailing blocks are part of the digest)."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()

    def verify(self, expected: str, what: str) -> None:
        self.drain()
        if self.digest != expected:
            raise DigestError(f"{what}: digest {self.digest} does not match {expected}")


class _Prefixed:
    """A reader giving *head* back before the rest of *raw* (for sniffing a magic number)."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self.head = head
        self.raw = raw

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                out, self.head = self.head + self.raw.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.raw.read(n)

    def readable(self) -> bool:
        return True


def decompressed(raw: IO[bytes]) -> IO[bytes]:
    """The uncompressed bytes of a layer blob: gzip and zstd are recognized by their magic."""
    head = raw.read(4)
    source = _Prefixed(head, raw)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[call-overload]
    if head.startswith(ZSTD_MAGIC):
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(source)  # type: ignore[arg-type]
        return reader
    return source  # type: ignore[return-value]
