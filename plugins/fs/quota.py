"""Disk quota: the container's writable layer on a filesystem of its own, of a fixed size.

Like Warden, each container with ``disk_size_mb`` gets a sparse image file in
its depot directory, formatted as ext4. The container's init attaches it to a
loop device (``LO_FLAGS_AUTOCLEAR``) and mounts it on ``DEPOT/H/disk`` in the
container's own mount namespace (the ``loop,host`` mount of the launch spec),
so the overlay's upper and work dirs live on it: a write past the size fails
with ENOSPC inside the container and nothing outside fills up. The mount, and
so the loop device, vanish with the container's namespaces; the daemon only
checks that they did, and detaches leftovers of a crash at startup.

Why ext4 without a journal: the layer lives only as long as the container
(which does not survive a host reboot), and ``mke2fs`` of a journal-less
image is the fastest sound way to get a hard size limit on a host whose root
filesystem has no project quotas.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import structlog

IMAGE_NAME = "disk.img"
MOUNT_NAME = "disk"
#: Directories of the image, made by mke2fs: the overlay's layers.
UPPER, WORK = "upper", "work"
#: The smallest and largest sizes accepted (MB): ext4 needs a few MB for itself.
MIN_MB, MAX_MB = 8, 16 * 1024 * 1024
#: linux/loop.h
LOOP_CLR_FD = 0x4C01
LOOP_GET_STATUS64 = 0x4C05
#: struct loop_info64: lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit, lo_number,
#: lo_encrypt_type, lo_encrypt_key_size, lo_flags, lo_file_name, lo_crypt_name,
#: lo_encrypt_key, lo_init.
LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")
SYS_BLOCK = Path("/sys/block")

log = structlog.get_logger()


class QuotaError(Exception):
    """The quota filesystem could not be made; the message says why."""


def mkfs_command(image: Path, skeleton: Path) -> list[str]:
    """``mke2fs`` of an ext4 image holding *skeleton*'s directories (no journal, no reserve)."""
    return [
        shutil.which("mke2fs") or "/sbin/mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-E",
        "lazy_itable_init=1,root_owner=0:0",
        "-d",
        str(skeleton),
        str(image),
    ]


def make_image(directory: Path, size_mb: int) -> Path:
    """Create ``directory/disk.img``: a sparse ext4 image of *size_mb* MB with ``upper/`` and ``work/``.

    Raises:
        QuotaError: mke2fs failed (its message is kept).
    """
    image = directory / IMAGE_NAME
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size_mb * 1024 * 1024)
    finally:
        os.close(fd)
    (directory / MOUNT_NAME).mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".skel-") as skeleton:
        for name in (UPPER, WORK):
            os.mkdir(os.path.join(skeleton, name), 0o755)
        result = subprocess.run(
            mkfs_command(image, Path(skeleton)),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if result.returncode != 0:
        image.unlink(missing_ok=True)
        text = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise QuotaError(f"mke2fs {image}: {text}")
    return image


@dataclass(frozen=True)
class LoopDevice:
    """An attached loop device and the file behind it."""

    name: str
    #: The backing file's path as the kernel shows it: from the root of its mount when that
    #: mount is not in this mount namespace (a container's copy of the depot's filesystem).
    backing: str
    #: Device number (``st_dev``) and inode of the backing file: exact, whatever the path.
    file: tuple[int, int]


def _backing_file(name: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file behind ``/dev/NAME`` (``LOOP_GET_STATUS64``)."""
    try:
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64.size))
    except OSError:
        return None  # detached meanwhile
    finally:
        os.close(fd)
    device, inode = LOOP_INFO64.unpack(info)[:2]
    # The kernel's huge_encode_dev(): minor's low byte, major, then minor's other bits.
    major, minor = (device & 0xFFF00) >> 8, (device & 0xFF) | ((device >> 12) & 0xFFF00)
    return os.makedev(major, minor), inode


def loop_devices() -> list[LoopDevice]:
    """The attached loop devices."""
    found = []
    for entry in SYS_BLOCK.glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue  # not attached
        file = _backing_file(entry.name)
        if file is not None:
            found.append(LoopDevice(entry.name, backing.removesuffix(" (deleted)"), file))
    return found


def loops_of(image: Path) -> list[str]:
    """Names of the loop devices backed by *image* (the very file, by device and inode)."""
    try:
        st = os.stat(image)
    except OSError:
        return []
    return [loop.name for loop in loop_devices() if loop.file == (st.st_dev, st.st_ino)]


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def images_of_depot(depot: Path) -> dict[str, str]:
    """Loop devices backed by a container's image in *depot*: name -> the container's handle.

    An image may be deleted already (a crashed create's directory is), so it is found
    by its filesystem (device number) and its path in it: the kernel shows the path
    from the root of the mount that the container's namespace holds.
    """
    device = os.stat(depot).st_dev
    depot_paths = {str(depot), "/" + str(depot.resolve().relative_to(_mount_point(depot)))}
    found = {}
    for loop in loop_devices():
        path = Path(loop.backing)
        if (
            loop.file[0] == device
            and path.name == IMAGE_NAME
            and str(path.parent.parent) in depot_paths
        ):
            found[loop.name] = path.parent.name
    return found


def detach(name: str) -> None:
    """``LOOP_CLR_FD`` on ``/dev/NAME``; a device still in use detaches itself when released."""
    try:
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as exc:
        log.warning("cannot detach loop device", device=name, error=exc.strerror)
    finally:
        os.close(fd)


class Usage(NamedTuple):
    """What a container's files take: bytes allocated and inodes."""

    bytes: int
    inodes: int


EMPTY = Usage(0, 0)


def usage(pid: int) -> Usage | None:
    """What is used on the quota filesystem of the container whose init is *pid* (its
    inodes include ext4's own few).

    ``statfs`` on an overlay reports its upper layer's filesystem: here the
    quota image, reached through the init's root.
    """
    try:
        st = os.statvfs(f"/proc/{pid}/root")
    except OSError:
        return None
    return Usage((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree)


def is_empty(path: Path) -> bool:
    """Whether the directory *path* holds nothing (its :func:`tree_usage` is 0): one
    ``getdents``, cheap enough for the event loop. False when it cannot be read."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def tree_usage(path: Path) -> Usage:
    """Bytes allocated under *path* and inodes there (each counted once), without following
    symlinks."""
    # scandir and one lstat per entry (DirEntry.stat), no os.walk: a metrics scrape walks
    # every container's layer, and os.walk's lists and joins were half of an idle one's walk.
    seen: set[tuple[int, int]] = set()
    total = 0
    directories = [os.fspath(path)]
    while directories:
        try:
            entries = os.scandir(directories.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                inode = (st.st_dev, st.st_ino)
                if inode not in seen:
                    seen.add(inode)
                    total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    directories.append(entry.path)
    return Usage(total, len(seen))
