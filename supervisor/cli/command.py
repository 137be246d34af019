"""What a ``corral`` subcommand is, and the helpers every command module shares.

A module that adds commands (in :mod:`supervisor.cli` or a plugin's, see docs/cli.md)
holds ``COMMANDS``, a list of :class:`Command`. Modules are imported only when one of
their commands runs (or for ``corral --help``), so each imports only what it needs.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs a short command 5 ms (see wire.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from supervisor.client import Client


class Command:
    """One subcommand: its name, one line of help, what it adds to its parser, what it does.

    ``run(args)`` returns the CLI's exit status; it connects with :func:`connect` if it
    talks to the daemon. Raising :class:`Fail` prints ``corral: MESSAGE`` and exits 1.
    """

    __slots__ = ("name", "help", "arguments", "run", "aliases")

    def __init__(
        self,
        name: str,
        help: str,
        run: Callable[[argparse.Namespace], int],
        arguments: Callable[[argparse.ArgumentParser], object] | None = None,
        aliases: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.help = help
        self.run = run
        self.arguments = arguments
        self.aliases = aliases


class Fail(Exception):
    """A user's mistake: one line, no traceback, exit status 1 (or ``status``)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def connect(args: argparse.Namespace, timeout: float | None = None) -> Client:
    """A client of the daemon the command line names (``-s``, ``$CORRAL_SOCKET``)."""
    from supervisor.client import DEFAULT_SOCKET, Client

    path = str(args.socket or os.environ.get("CORRAL_SOCKET") or DEFAULT_SOCKET)
    try:
        return Client(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise Fail(
            f"the daemon is not running (nothing listens on {path}): start it with "
            "`corraldctl start` (or `systemctl start corrald`), or name its socket with -s"
        ) from None
    except PermissionError:
        raise Fail(
            f"permission denied on {path}: run as root, or as a member of the socket's "
            "group (`socket_group` in /etc/corral/corral.toml)"
        ) from None


def exit_status(status: int | None) -> int:
    """The CLI's exit status for a job's: the same, or 255 when not known (destroyed)."""
    return 255 if status is None else status


def pairs(items: list[str], what: str) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; a malformed item fails naming the option."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Fail(f"{what} {item!r} is not NAME=VALUE")
        out[key] = value
    return out


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """Bytes from ``64m``, ``1g``, ``512k``, ``1MB``, ``4194304`` (powers of 1024, as Docker)."""
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    digits = lowered.rstrip("kmgt")
    unit = lowered[len(digits) :]
    try:
        number = float(digits)
    except ValueError:
        number = -1
    if unit not in _UNITS or number < 0 or len(unit) > 1:
        raise Fail(f"{what} {text!r} is not a size (a number with k, m, g or t, e.g. 64m)")
    return int(number * _UNITS[unit])


def write_out(name: str, data: bytes) -> None:
    """Write a job's output to our stdout or stderr as it comes."""
    stream = sys.stdout if name == "stdout" else sys.stderr
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()
