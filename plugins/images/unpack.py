"""The safe layer unpacker: a layer tarball into a directory of its own, in overlay form.

Layer tarballs come from registries and archives nobody vetted, so every path
is walked from the layer directory's fd, one component at a time, with
``O_NOFOLLOW``: no entry can be written through a symlink (one of the layer's
own, made by an earlier entry), leave the directory by ``..`` or an absolute
path, or hard-link to anything outside it. Absolute names are taken relative
to the layer root, as image builders mean them; a name whose ``..`` would
climb above the root is refused.

As a container runtime does (running as root): owners, modes (setuid and
setgid included), device nodes and FIFOs are kept. That is safe because the
store's directory is 0700 (no host user reaches a setuid file or a device node
in it) and containers reach devices only through the cgroup device rules.

OCI whiteouts become overlay's: ``.wh.NAME`` a 0/0 character device ``NAME``,
``.wh..wh..opq`` the ``trusted.overlay.opaque`` xattr on its directory.

The caller unpacks into a fresh directory and renames it into place only when
this returns (see :mod:`plugins.images.store`).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
#: pax xattrs a layer may set on its files; others (``trusted.*``, ``security.selinux``...)
#: would let a layer steer the host's overlay or security modules.
KEPT_XATTRS = ("user.", "security.capability")
COPY_CHUNK = 1 << 20
#: Errors that are the host's trouble, not the layer's (any other failing call on an
#: entry is the entry's fault: a name too long, a file where a directory must be...).
HOST_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM)


class LayerError(Exception):
    """The layer is refused: the message names the entry and the reason."""


def clean_name(name: str) -> list[str]:
    """The components of an entry's *name* below the layer root.

    Raises:
        LayerError: the name is empty, holds a NUL, or climbs above the root.
    """
    if "\0" in name:
        raise LayerError(f"entry {name!r}: NUL in the name")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise LayerError(f"entry {name!r} leaves the layer directory")
            parts.pop()
        else:
            parts.append(part)
    return parts


class Unpacker:
    """Writes the entries of one layer under *root* (a new, empty directory)."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        #: Directories whose times are set last (their entries change them).
        self._dir_times: list[tuple[list[str], float]] = []

    def close(self) -> None:
        os.close(self.root_fd)

    # -- walking --------------------------------------------------------------------

    @contextmanager
    def _parent(self, parts: list[str], name: str, create: bool = True) -> Iterator[int]:
        """An fd of the directory holding ``parts[-1]``, reached without following a link."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise LayerError(f"entry {name!r}: {part!r} does not exist") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LayerError(
                            f"entry {name!r} goes through {part!r}, which is not a directory "
                            "(a symlink or a file)"
                        ) from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _clear(parent: int, leaf: str, keep_dir: bool) -> bool:
        """Remove what is at *leaf* so an entry can take its place; True if a directory stays."""
        try:
            st = os.lstat(leaf, dir_fd=parent)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            _remove_tree(parent, leaf)
        else:
            os.unlink(leaf, dir_fd=parent)
        return False

    # -- entries --------------------------------------------------------------------

    def add(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> None:
        """Write one entry (*data*: the file's content for a regular file)."""
        parts = clean_name(member.name)
        if not parts:
            if member.isdir():
                self._set_meta(self.root_fd, None, member)
            return
        leaf = parts[-1]
        with self._parent(parts, member.name) as parent:
            if leaf == OPAQUE_MARKER:
                os.setxattr(parent, OPAQUE_XATTR, b"y")
                return
            if leaf.startswith(WHITEOUT_PREFIX):
                hidden = leaf[len(WHITEOUT_PREFIX) :]
                if hidden in ("", ".", ".."):
                    raise LayerError(f"entry {member.name!r}: a whiteout of nothing")
                self._clear(parent, hidden, keep_dir=False)
                os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
                return
            if member.isdir():
                if not self._clear(parent, leaf, keep_dir=True):
                    os.mkdir(leaf, 0o700, dir_fd=parent)
                fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
                try:
                    self._set_meta(fd, None, member)
                finally:
                    os.close(fd)
                self._dir_times.append((parts, member.mtime))
                return
            self._clear(parent, leaf, keep_dir=False)
            if member.isreg():
                fd = os.open(
                    leaf,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=parent,
                )
                try:
                    if data is not None:
                        _copy(data, fd, member.size)
                    self._set_meta(fd, None, member)
                finally:
                    os.close(fd)
            elif member.issym():
                if "\0" in member.linkname:
                    raise LayerError(f"entry {member.name!r}: NUL in the link target")
                # A symlink's target is never followed here: no later entry may pass through it.
                os.symlink(member.linkname, leaf, dir_fd=parent)
                self._set_meta(parent, leaf, member)
            elif member.islnk():
                target = clean_name(member.linkname)
                if not target:
                    raise LayerError(f"entry {member.name!r}: hard link to the layer root")
                with self._parent(target, member.name, create=False) as source_parent:
                    try:
                        st = os.lstat(target[-1], dir_fd=source_parent)
                    except FileNotFoundError:
                        raise LayerError(
                            f"entry {member.name!r}: hard link to {member.linkname!r}, "
                            "which is not in the layer"
                        ) from None
                    if stat.S_ISDIR(st.st_mode):
                        raise LayerError(f"entry {member.name!r}: hard link to a directory")
                    os.link(
                        target[-1],
                        leaf,
                        src_dir_fd=source_parent,
                        dst_dir_fd=parent,
                        follow_symlinks=False,
                    )
            elif member.ischr() or member.isblk() or member.isfifo():
                kind = (
                    stat.S_IFCHR
                    if member.ischr()
                    else stat.S_IFBLK
                    if member.isblk()
                    else stat.S_IFIFO
                )
                device = os.makedev(member.devmajor, member.devminor) if kind != stat.S_IFIFO else 0
                os.mknod(leaf, kind | 0o600, device, dir_fd=parent)
                self._set_meta(parent, leaf, member)
            else:
                raise LayerError(f"entry {member.name!r}: unsupported type {member.type!r}")

    def _set_meta(self, fd: int, leaf: str | None, member: tarfile.TarInfo) -> None:
        """Owner, then mode (a chown clears setuid), xattrs and times, never following a link."""
        is_link = member.issym()
        if leaf is None:
            os.chown(fd, member.uid, member.gid)
            os.chmod(fd, stat.S_IMODE(member.mode))
            for key, value in _xattrs(member):
                os.setxattr(fd, key, value)
            if not member.isdir():
                os.utime(fd, (member.mtime, member.mtime))
            return
        os.chown(leaf, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
        if not is_link:  # Linux has no mode on a symlink
            os.chmod(leaf, stat.S_IMODE(member.mode), dir_fd=fd)
        os.utime(leaf, (member.mtime, member.mtime), dir_fd=fd, follow_symlinks=False)

    def finish(self) -> None:
        """Set the directories' times, deepest first (entries written into them changed them)."""
        for parts, mtime in sorted(self._dir_times, key=lambda item: -len(item[0])):
            try:
                with self._parent(parts, "/".join(parts), create=False) as parent:
                    os.utime(parts[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)
            except (LayerError, FileNotFoundError):
                continue  # replaced or whited out by a later entry


def _xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            if name.startswith(KEPT_XATTRS):
                yield name, value.encode("utf-8", "surrogateescape")


def _copy(data: IO[bytes], fd: int, size: int) -> None:
    left = size
    while left > 0:
        chunk = data.read(min(COPY_CHUNK, left))
        if not chunk:
            raise LayerError("the layer ends inside a file (truncated)")
        os.write(fd, chunk)  # a regular file takes whole writes
        left -= len(chunk)


def _remove_tree(parent: int, name: str) -> None:
    """Remove directory *name* under *parent* and everything in it, without following links."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    try:
        for entry in os.listdir(fd):
            st = os.lstat(entry, dir_fd=fd)
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def unpack(stream: IO[bytes], root: Path) -> None:
    """Unpack the uncompressed layer tarball *stream* into the empty directory *root*.

    Raises:
        LayerError: a hostile or broken entry (nothing is promised about *root* then:
            the caller throws it away).
    """
    unpacker = Unpacker(root)
    try:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    data = archive.extractfile(member) if member.isreg() else None
                    try:
                        unpacker.add(member, data)
                    except OSError as exc:
                        if exc.errno in HOST_ERRORS:
                            raise
                        raise LayerError(f"entry {member.name!r}: {exc.strerror}") from None
        except tarfile.TarError as exc:
            raise LayerError(f"not a tar archive, or a broken one: {exc}") from None
        unpacker.finish()
    finally:
        unpacker.close()
