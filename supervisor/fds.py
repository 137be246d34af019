"""Closing file descriptors whose close may block, off the event loop."""

from __future__ import annotations

import os
import queue
import threading

_closing: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None
_started = threading.Lock()


def close_soon(fd: int) -> None:
    """Close *fd* on a thread of its own, without waiting.

    Closing an inotify instance that holds a watch waits for an SRCU grace period in
    the kernel (up to ~15 ms here, one close in two): done on the event loop, it
    stalled every client of the daemon. The caller must not use *fd* again (and should
    have told trio with ``notify_closing``).
    """
    global _closer
    _closing.put(fd)
    with _started:
        if _closer is None:
            _closer = threading.Thread(target=_close_forever, name="fd-closer", daemon=True)
            _closer.start()


def _close_forever() -> None:
    while True:
        fd = _closing.get()
        try:
            os.close(fd)
        except OSError:
            pass  # closed already: nothing to do
