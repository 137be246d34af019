"""On-disk state of each container, written atomically and read back on start.

Layout under the depot root, one directory per container::

    HANDLE/state.N.json    the container record (see Container.to_record), N its version
    HANDLE/jobs/ID/        stdout, stderr, status (written by the container's init)
    HANDLE/...             whatever plugins keep there (rootfs mountpoint, layers, socket)
    .trash/HANDLE.N/       a destroyed container's directory, until it is deleted

Each save writes a new file ``state.N+1.json`` and then removes
``state.N.json``; a reader takes the highest version that parses. A daemon
killed at any moment so leaves the old or the new record, never a torn one.
This beats write-and-rename: replacing a file by ``rename`` makes ext4 flush
the new data at once (``auto_da_alloc``), ten times the cost of a new file.
Records are not fsynced: they must survive the daemon, not the machine
(containers do not survive a reboot either).

Destroy moves a container's directory into ``.trash`` (one rename) and deletes
it after the reply: deleting a container's dozen files and directories costs
about a millisecond, most of a destroy's own work. Whatever a daemon leaves
in the trash, the next one deletes at start.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_PREFIX, STATE_SUFFIX = "state.", ".json"
TRASH = ".trash"


class Depot:
    """The directory of container directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trash = root / TRASH
        self._versions: dict[str, int] = {}
        self._discarded = 0

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
        self._versions.pop(handle, None)
        path.mkdir(mode=0o700)
        (path / "jobs").mkdir(mode=0o700)
        return path

    def save(self, handle: str, record: dict[str, Any]) -> None:
        """Write a new version of the container's record, then drop the previous one."""
        path = self.path(handle)
        version = self._versions.get(handle, 0) + 1
        data = json.dumps(record, separators=(",", ":")).encode()
        fd = os.open(
            path / _state_name(version), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self._versions[handle] = version
        try:
            os.unlink(path / _state_name(version - 1))
        except FileNotFoundError:
            pass

    def records(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Every container directory with its newest readable record (None if none)."""
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                yield entry.name, self._load(entry)

    def _load(self, path: Path) -> dict[str, Any] | None:
        versions = _record_versions(path)
        record = None
        for version, name in reversed(versions):
            try:
                record = json.loads((path / name).read_bytes())
            except (OSError, ValueError):
                continue  # torn by a crash mid-write: the previous version holds
            self._versions[path.name] = version
            break
        for version, name in versions:  # keep only the version in force
            if self._versions.get(path.name) != version:
                (path / name).unlink(missing_ok=True)
        return record

    def remove(self, handle: str) -> None:
        """Delete the container's directory and everything left in it."""
        self._versions.pop(handle, None)
        shutil.rmtree(self.path(handle), ignore_errors=True)

    def discard(self, handle: str) -> Path | None:
        """Move the container's directory into the trash; its path there (None: not moved)."""
        self._versions.pop(handle, None)
        self._discarded += 1
        target = self.trash / f"{handle}.{self._discarded}"
        try:
            self.trash.mkdir(mode=0o700, exist_ok=True)
            os.rename(self.path(handle), target)
        except OSError:
            return None
        return target

    def trash_left(self) -> list[Path]:
        """What is in the trash (a daemon that stopped before deleting it)."""
        return sorted(self.trash.iterdir()) if self.trash.is_dir() else []


def _state_name(version: int) -> str:
    return f"{STATE_PREFIX}{version}{STATE_SUFFIX}"


def _record_versions(container_dir: Path) -> list[tuple[int, str]]:
    """``(version, file name)`` of every record file in a container directory, oldest first."""
    versions = []
    for name in os.listdir(container_dir):
        number = name[len(STATE_PREFIX) : -len(STATE_SUFFIX)]
        if name.startswith(STATE_PREFIX) and name.endswith(STATE_SUFFIX) and number.isdigit():
            versions.append((int(number), name))
    return sorted(versions)


def record_path(container_dir: Path) -> Path | None:
    """The file holding the newest record of a container directory (for tools and tests)."""
    versions = _record_versions(container_dir)
    return container_dir / versions[-1][1] if versions else None
