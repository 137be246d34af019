"""``create`` CONFIG ``"rootfs_mode": "direct"``: the container's root is the ``rootfs``
directory itself, writable (chroot semantics), instead of an overlay on it.

The container's root user is the host's (no user namespace), so writes land in the
directory as root. The directory is therefore refused when it is ``/``, one of the
host's system directories, or holds or lies inside a directory of the daemon's (its
depot, where the image store and every container's state are, the base rootfs every
overlay shares, the socket's directory, the init's). It is checked and mounted through
one ``O_PATH`` fd, symlinks resolved; the init binds that real path. The kernel
binds no fd of another mount namespace, so a path swapped meanwhile (a component
replaced by a symlink) is caught after: once the init runs, the create fails unless
its root is the very directory checked (device and inode), before any job ran.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from supervisor.api import InvalidRequest, Mount

MODES = ("overlay", "direct")
#: ``[isolation] init`` when the config does not say.
DEFAULT_INIT = "/usr/local/lib/corral/corral-init"
#: The host's own directories, never a container's writable root (nor any inside them).
SYSTEM_DIRS = tuple(
    Path(p)
    for p in (
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
        "/var/lib",
        "/var/log",
    )
)


def check_mode(value: object) -> str:
    if value not in MODES:
        raise InvalidRequest(
            f"rootfs_mode: {value!r} is not one of {', '.join(map(repr, MODES))} "
            "(overlay: a private writable layer on rootfs; direct: rootfs itself, writable)"
        )
    return str(value)


def _related(path: Path, other: Path) -> bool:
    """Whether *path* is *other*, or holds it, or lies inside it."""
    return path == other or path in other.parents or other in path.parents


def open_root(path: str, daemon_dirs: Iterable[Path]) -> tuple[int, str]:
    """An ``O_PATH`` fd of *path*, checked fit to be a container's writable root, and
    its real path.

    Raises:
        InvalidRequest: naming the directory and why it is refused.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidRequest(f"rootfs {path}: {exc.strerror}") from None
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))  # what the fd is, symlinks resolved
        shown = path if str(real) == path else f"{path} (that is {real})"
        if real == Path("/"):
            raise InvalidRequest(
                f'rootfs {shown}: "rootfs_mode": "direct" would let the container write '
                "the host's root"
            )
        for system in SYSTEM_DIRS:
            if real == system or system in real.parents:
                raise InvalidRequest(
                    f'rootfs {shown}: "rootfs_mode": "direct" refused inside the host\'s '
                    f"system directory {system}"
                )
        for own in daemon_dirs:
            own = Path(os.path.realpath(own))
            if _related(real, own):
                raise InvalidRequest(
                    f'rootfs {shown}: "rootfs_mode": "direct" refused: the daemon\'s own '
                    f"directory {own} would be written by the container"
                )
        try:
            bin_dir = os.stat("bin", dir_fd=fd)
        except OSError:
            bin_dir = None
        if bin_dir is None or not stat.S_ISDIR(bin_dir.st_mode):
            raise InvalidRequest(f"rootfs {shown}: not a root filesystem (no bin/ directory)")
    except BaseException:
        os.close(fd)
        raise
    return fd, str(real)


def identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def identity_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def root_mount(path: str) -> Mount:
    """The mount making the directory *path* (real, checked) the container's root."""
    if any(c in path for c in (",", ":", "\t", "\n", "\0")):
        raise InvalidRequest(f"rootfs {path}: its real path has a character the spec cannot carry")
    return Mount("none", path, "/", ("bind", "rec"))
