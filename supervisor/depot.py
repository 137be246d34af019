"""On-disk state of each container, written atomically and read back on start.

Layout under the depot root, one directory per container::

    HANDLE/record.0, record.1  the container record (see Container.to_record), two slots
    HANDLE/jobs/ID/            stdout, stderr, status (written by the container's init)
    HANDLE/...                 whatever plugins keep there (rootfs mountpoint, layers, socket)
    .trash/HANDLE.N/           a destroyed container's directory, until it is deleted
    .spare/N/                  an emptied one, for a later create (see below)

Version N of a record is written over slot ``N % 2`` in place: a header line
``corral-record N LENGTH CRC32`` and then the JSON. A reader takes the highest
version whose length and checksum hold, so a daemon killed mid-write leaves
the previous version in the other slot, never a torn record. Writing in
place, without truncating, costs a fifth of making a new file per save (and
replacing a file by ``rename`` makes ext4 flush the new data at once,
``auto_da_alloc``). Records are not fsynced: they must survive the daemon, not
the machine (containers do not survive a reboot either). A directory with
``state.N.json`` files (Corral before the slots) is read and rewritten in slots.

Destroy moves a container's directory into ``.trash`` (one rename) and deletes
it after the reply, after the cleanups its plugins registered with
``Container.after_destroy``: deleting a container's dozen files and directories costs
about a millisecond, most of a destroy's own work. Whatever a daemon leaves
in the trash, the next one deletes at start.

Up to :data:`MAX_SPARES` of those directories are not deleted but emptied of
all but the record slots (truncated) and ``jobs/`` (empty), given new empty
directories plugins make in every container's directory (the fs plugin's
``upper``, ``work`` and ``rootfs``, see ``corral_spare_directories``), and
kept in ``.spare``: create renames one to its handle instead of making a
directory, a ``jobs/``, the plugins' directories and, at the first save, a
record file (0.1-0.4 ms less on ext4, measured alone; within the noise of the
daemon's paired runs). Of the destroyed container only the emptied slots and
``jobs/`` remain. A daemon's spares go to the trash at its start, to be emptied
again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SLOTS = ("record.0", "record.1")
MAGIC = b"corral-record"
LEGACY_PREFIX, LEGACY_SUFFIX = "state.", ".json"
TRASH = ".trash"
SPARE = ".spare"
#: How many emptied container directories are kept for later creates.
MAX_SPARES = 8


class Depot:
    """The directory of container directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trash = root / TRASH
        self.spare = root / SPARE
        self._versions: dict[str, int] = {}
        self._discarded = 0
        # Filled by the worker thread that empties the trash, taken by create:
        # deque's append and pop are atomic.
        self._spares: deque[Path] = deque()
        self._spared = 0
        #: Directories (name: mode) plugins make in every container's directory,
        #: made ahead, empty, in each spare (``corral_spare_directories``).
        self.spare_directories: dict[str, int] = {}

    def open(self) -> None:
        """Create the depot root (mode 0700), its trash and spares if needed.

        Spares a daemon left go to the trash (one rename), to be emptied again with it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.trash.mkdir(mode=0o700, exist_ok=True)
        self.spare.mkdir(mode=0o700, exist_ok=True)
        for entry in os.listdir(self.spare):
            os.rename(self.spare / entry, self.trash / f"{SPARE}{entry}")

    def path(self, handle: str) -> Path:
        """The directory of container *handle*."""
        return self.root / handle

    def create(self, handle: str) -> Path:
        """Make the directory of a new container (from a spare if any); fails if it exists."""
        path = self.path(handle)
        self._versions.pop(handle, None)
        try:
            spare = self._spares.pop()
        except IndexError:
            spare = None
        if spare is not None:
            if os.path.lexists(path):
                self._spares.append(spare)
                raise FileExistsError(errno.EEXIST, "container directory exists", str(path))
            try:
                os.rename(spare, path)
                return path
            except OSError:
                shutil.rmtree(spare, ignore_errors=True)
        path.mkdir(mode=0o700)
        (path / "jobs").mkdir(mode=0o700)
        return path

    def recycle(self, trashed: Path) -> bool:
        """Empty a destroyed container's directory into a spare (blocking; for a worker thread).

        False if there are spares enough, or it could not be emptied: the caller deletes it.
        """
        if len(self._spares) >= MAX_SPARES:
            return False
        try:
            for entry in os.scandir(trashed):
                if entry.name in SLOTS and entry.is_file(follow_symlinks=False):
                    os.truncate(entry.path, 0)
                elif entry.name == "jobs" and entry.is_dir(follow_symlinks=False):
                    for job in os.scandir(entry.path):
                        _remove(job)
                else:  # a plugin's directory too: made again, new, below
                    _remove(entry)
            if not (trashed / "jobs").is_dir():
                (trashed / "jobs").mkdir(mode=0o700)
            for name, mode in self.spare_directories.items():
                os.mkdir(trashed / name, mode)
                os.chmod(trashed / name, mode)  # exact, whatever the umask
            self._spared += 1
            target = self.spare / str(self._spared)
            os.rename(trashed, target)
        except OSError:
            return False
        self._spares.append(target)
        return True

    def save(self, handle: str, record: dict[str, Any]) -> None:
        """Write the next version of the container's record over the older slot."""
        version = self._versions.get(handle, 0) + 1
        data = json.dumps(record, separators=(",", ":")).encode()
        blob = b"%s %d %d %08x\n%s" % (MAGIC, version, len(data), zlib.crc32(data), data)
        slot = os.path.join(self.root, handle, SLOTS[version % 2])
        fd = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.pwrite(fd, blob, 0) != len(blob):
                raise OSError(errno.ENOSPC, f"record of {handle}: short write")
        finally:
            os.close(fd)
        self._versions[handle] = version

    def records(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Every container directory with its newest readable record (None if none)."""
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                yield entry.name, self._load(entry)

    def _load(self, path: Path) -> dict[str, Any] | None:
        newest = _newest_record(path)
        if newest is not None:
            self._versions[path.name], record = newest
            return record
        legacy = _newest_legacy_record(path)
        if legacy is None:
            return None
        self._versions[path.name], record = legacy
        self.save(path.name, record)
        for name in os.listdir(path):
            if name.startswith(LEGACY_PREFIX) and name.endswith(LEGACY_SUFFIX):
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
            os.rename(self.path(handle), target)
        except OSError:
            return None
        return target

    def trash_left(self) -> list[Path]:
        """What is in the trash (a daemon that stopped before deleting it)."""
        return sorted(self.trash.iterdir()) if self.trash.is_dir() else []


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
    else:
        os.unlink(entry.path)


def _decode(blob: bytes) -> tuple[int, dict[str, Any]] | None:
    """``(version, record)`` of one slot, or None if it is empty or torn."""
    header, newline, rest = blob.partition(b"\n")
    fields = header.split()
    if not newline or len(fields) != 4 or fields[0] != MAGIC:
        return None
    try:
        version, length, crc = int(fields[1]), int(fields[2]), int(fields[3], 16)
        data = rest[:length]
        if len(data) != length or zlib.crc32(data) != crc:
            return None
        return version, json.loads(data)
    except ValueError:
        return None


def _newest_record(container_dir: Path) -> tuple[int, dict[str, Any]] | None:
    found = []
    for name in SLOTS:
        try:
            decoded = _decode((container_dir / name).read_bytes())
        except OSError:
            continue
        if decoded is not None:
            found.append(decoded)
    return max(found, key=lambda pair: pair[0]) if found else None


def _newest_legacy_record(container_dir: Path) -> tuple[int, dict[str, Any]] | None:
    versions = []
    for name in os.listdir(container_dir):
        number = name[len(LEGACY_PREFIX) : -len(LEGACY_SUFFIX)]
        if name.startswith(LEGACY_PREFIX) and name.endswith(LEGACY_SUFFIX) and number.isdigit():
            versions.append(int(number))
    for version in sorted(versions, reverse=True):
        try:
            return version, json.loads(
                (container_dir / f"{LEGACY_PREFIX}{version}{LEGACY_SUFFIX}").read_bytes()
            )
        except (OSError, ValueError):
            continue  # torn by a crash mid-write: the previous version holds
    return None


def read_record(container_dir: Path) -> dict[str, Any] | None:
    """The newest record of a container directory, read only (for tools and tests)."""
    newest = _newest_record(container_dir)
    return newest[1] if newest is not None else None
