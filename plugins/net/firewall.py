"""nftables through its JSON API: libnftables via ctypes, or the ``nft`` binary.

Each call runs one JSON document, which nftables applies as one transaction:
either every command of a batch takes effect or none does. Calls block, so
:class:`Firewall` runs them in a worker thread, one at a time.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import threading
from typing import Any

import trio

from plugins.net.rules import Command, Ruleset
from supervisor.api import CorralError

LIBNFTABLES = "libnftables.so.1"
#: nftables/libnftables.h: enum nft_output_flags
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4


class FirewallError(CorralError):
    """nftables refused a batch (nothing of it was applied)."""


class _LibNftables:
    """A libnftables context used by one thread at a time (it is not thread-safe)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(LIBNFTABLES, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, document: bytes) -> tuple[int, str, str]:
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, document)
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


class _NftBinary:
    """The ``nft`` command, when libnftables cannot be loaded."""

    def __init__(self) -> None:
        path = shutil.which("nft")
        if path is None:
            raise OSError(
                "neither libnftables.so.1 nor the nft command was found (install nftables)"
            )
        self.path = path

    def run(self, document: bytes) -> tuple[int, str, str]:
        done = subprocess.run(
            [self.path, "-j", "-a", "-f", "-"], input=document, capture_output=True, check=False
        )
        return (
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )


def open_backend() -> _LibNftables | _NftBinary:
    """libnftables in-process when available (no fork per batch), else the nft binary."""
    try:
        return _LibNftables()
    except OSError:
        return _NftBinary()


class Firewall:
    """The daemon's nftables table: applies batches one at a time, off the trio thread.

    Raises:
        OSError: neither libnftables nor the ``nft`` command is installed.
    """

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self._backend = open_backend()
        self._lock = trio.Lock()

    def _run_sync(self, commands: list[Command], what: str) -> list[dict[str, Any]]:
        document = json.dumps({"nftables": commands}).encode()
        rc, out, err = self._backend.run(document)
        if rc != 0:
            reason = " ".join(line for line in err.splitlines() if line.strip()) or f"exit {rc}"
            raise FirewallError(f"nftables table {self.ruleset.table}: cannot {what}: {reason}")
        if not out.strip():
            return []
        result: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return result

    async def apply(self, commands: list[Command], what: str) -> list[dict[str, Any]]:
        """Run *commands* as one transaction; return what nftables printed (for ``list``).

        Raises:
            FirewallError: nftables refused the batch; nothing of it was applied.
        """
        if not commands:
            return []
        async with self._lock:
            return await trio.to_thread.run_sync(self._run_sync, commands, what)

    async def remove_tagged(self, tag: str) -> int:
        """Delete every rule whose comment is *tag* in one transaction; return how many."""
        async with self._lock:

            def work() -> int:
                listing = self._run_sync(self.ruleset.list_table(), "list its rules")
                deletes = self.ruleset.delete_tagged(listing, tag)
                if deletes:
                    self._run_sync(deletes, f"remove the rules of {tag}")
                return len(deletes)

            return await trio.to_thread.run_sync(work)
