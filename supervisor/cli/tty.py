"""The local terminal of ``corral run -t`` / ``exec -t``: raw mode, restored on every exit
path, and its size (sent again on SIGWINCH)."""

from __future__ import annotations

import os
import termios
import tty

TYPE_CHECKING = False  # typing costs 3 ms to import, on every `corral run`
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

DEFAULT_SIZE = (24, 80)


def size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on *fd*, or 24x80 when it is none."""
    try:
        cols, rows = os.get_terminal_size(fd)
    except OSError:
        return DEFAULT_SIZE
    return (rows or DEFAULT_SIZE[0], cols or DEFAULT_SIZE[1])


def local_size() -> tuple[int, int]:
    """The size of whichever of stdout, stdin, stderr is a terminal (output first)."""
    for fd in (1, 0, 2):
        if os.isatty(fd):
            return size(fd)
    return DEFAULT_SIZE


class RawMode:
    """``with RawMode(0):`` the terminal on fd passes every byte as typed (Ctrl-C, Ctrl-D,
    Ctrl-Z go to the container's terminal, which makes the signals there), and gets its
    settings back however the block ends. A *fd* that is no terminal is left alone."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def __enter__(self) -> RawMode:
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def restore(self) -> None:
        if self.saved is not None:
            # TCSAFLUSH: what was typed in raw mode and not yet read is not replayed to the shell.
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, self.saved)
            self.saved = None
