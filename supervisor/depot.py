"""On-disk state of each container, written atomically and read back on start.

Layout under the depot root, one directory per container::

    HANDLE/state.json      the container record (see Container.to_record)
    HANDLE/jobs/ID/        stdout, stderr, status (written by the container's init)
    HANDLE/...             whatever plugins keep there (rootfs mountpoint, layers, socket)

``state.json`` is replaced with write-to-temp then ``rename``, so a daemon killed
at any moment leaves either the old or the new record, never a torn one. It is
not fsynced: it must survive the daemon, not the machine (containers do not
survive a reboot either).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


class Depot:
    """The directory of container directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self) -> None:
        """Create the depot root (mode 0700) if needed."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def path(self, handle: str) -> Path:
        """The directory of container *handle*."""
        return self.root / handle

    def create(self, handle: str) -> Path:
        """Make the directory of a new container; fails if it exists."""
        path = self.path(handle)
        path.mkdir(mode=0o700)
        (path / "jobs").mkdir(mode=0o700)
        return path

    def save(self, handle: str, record: dict[str, Any]) -> None:
        """Atomically replace the container's record."""
        path = self.path(handle)
        tmp = path / (STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, separators=(",", ":"))
        os.rename(tmp, path / STATE_FILE)

    def records(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Every container directory with its record (None if missing or unreadable)."""
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir():
                continue
            try:
                record = json.loads((entry / STATE_FILE).read_text())
            except (OSError, ValueError):
                record = None
            yield entry.name, record

    def remove(self, handle: str) -> None:
        """Delete the container's directory and everything left in it."""
        shutil.rmtree(self.path(handle), ignore_errors=True)
