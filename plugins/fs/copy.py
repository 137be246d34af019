"""Copy trees between the host and a container, rsync-like, one fd-relative step at a time.

Semantics (Warden's ``copy_in``/``copy_out``, which ran ``rsync -r -p --links``):

- ``SRC`` without a trailing ``/`` copies the entry itself: a directory lands in
  ``DST/NAME``; a file lands in ``DST/NAME`` if ``DST`` is a directory (or ends
  with ``/``), else it becomes ``DST``. ``SRC/`` copies the directory's contents
  into ``DST``. A missing last component of ``DST`` is created as a directory.
- Permission bits and symbolic links are kept (a symlink is copied as a
  symlink, never followed); hard links become separate files; sockets, fifos
  and device nodes are skipped. An entry in the way is replaced (a non-empty
  directory in the way of a file is an error); directories are merged.
- Every created entry is given one owner (the container's unprivileged user
  on the way in; root or the client's OWNER on the way out, see
  :func:`plugins.fs.command.copy_out_owner` for a client that is not root).
- On the way out, set-user-ID and set-group-ID bits survive only when the new
  owner (user, respectively group) is not root: a container must not be able
  to leave a setuid-root program on the host.

Safety: both top-level paths are opened through a :class:`Side` (inside the
container with ``RESOLVE_IN_ROOT``; on the host with the rights of the client:
plainly for a root client, else with its own credentials and without magic
links, see :mod:`plugins.fs.identity`); from there on every step is relative to
an open directory fd with ``O_NOFOLLOW``/``AT_SYMLINK_NOFOLLOW`` and files are made with
``O_CREAT|O_EXCL|O_NOFOLLOW``, so a symlink swapped in by the container
mid-copy is never followed on either side. Data moves in chunks with
``sendfile`` (read/write when the filesystems refuse it), so memory does not
grow with the size copied. Everything here is blocking: run it in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from plugins.fs.identity import IdMapping, acting_as_client, as_daemon, as_ids
from plugins.fs.resolve import RESOLVE_NO_MAGICLINKS, open_in_root, openat2, split

#: Bytes moved per sendfile/read call; also how often a cancelled copy notices.
CHUNK = 1 << 20
#: Deepest directory nesting copied: every level holds two directory fds open.
MAX_DEPTH = 128
#: Mode bits a file may keep.
PERMISSIONS = 0o7777

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: O_NONBLOCK: an entry swapped for a fifo after the lstat must not hang the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
AT_FDCWD = -100


class CopyError(Exception):
    """A step of the copy failed; ``path`` is the path (as the client named it) that failed."""

    def __init__(self, path: str, errnum: int, reason: str | None = None) -> None:
        self.path = path
        self.errno = errnum
        self.reason = reason or os.strerror(errnum)
        super().__init__(f"{path}: {self.reason}")


class Cancelled(Exception):
    """The copy was abandoned because its container is being destroyed."""


@dataclass(frozen=True)
class Owner:
    """Owner given to every created entry, and whether setuid/setgid bits may stay."""

    uid: int
    gid: int
    keep_setuid: bool = True
    keep_setgid: bool = True

    def mode(self, st_mode: int) -> int:
        """The permission bits to give an entry copied from one of mode *st_mode*."""
        mode = stat.S_IMODE(st_mode) & PERMISSIONS
        if not self.keep_setuid:
            mode &= ~stat.S_ISUID
        if not self.keep_setgid and not stat.S_ISDIR(st_mode):
            mode &= ~stat.S_ISGID
        return mode


class Side:
    """One end of a copy: how its top-level paths are opened, and with whose rights."""

    def open(self, path: str, flags: int) -> int:
        """Open *path*, following symlinks as this side allows."""
        raise NotImplementedError

    def acting(self) -> AbstractContextManager[None]:
        """The rights every step on this side is taken with (entered around each)."""
        return nullcontext()


class HostSide(Side):
    """The host, with the thread's rights: a root client's paths are trusted; any other
    client's are walked with its own credentials (:func:`~plugins.fs.identity.run_as_client`)."""

    def open(self, path: str, flags: int) -> int:
        if acting_as_client() is None:
            return os.open(path, flags | os.O_CLOEXEC)
        # /proc/PID/root and /proc/PID/fd/N would lead through what the daemon holds.
        return openat2(AT_FDCWD, path, flags, 0, RESOLVE_NO_MAGICLINKS)


class ContainerSide(Side):
    """A container, seen through an ``O_PATH`` fd of its root, with the daemon's rights
    and, for a container with ids of its own, its root's ids (see
    :mod:`plugins.fs.identity`)."""

    def __init__(self, rootfd: int, ids: IdMapping) -> None:
        self.rootfd = rootfd
        self.root_ids = None if ids.is_host else ids.to_host(0, 0)

    def open(self, path: str, flags: int) -> int:
        with self.acting():
            return open_in_root(self.rootfd, path, flags)

    @contextmanager
    def _acting(self) -> Iterator[None]:
        with as_daemon():
            if self.root_ids is None:
                yield
            else:
                with as_ids(*self.root_ids):
                    yield

    def acting(self) -> AbstractContextManager[None]:
        return self._acting()


class Copier:
    """Copies one ``SRC`` to one ``DST``; see the module docstring for the rules."""

    def __init__(
        self, source: Side, dest: Side, owner: Owner, cancel: threading.Event | None = None
    ) -> None:
        self.source = source
        self.dest = dest
        self.owner = owner
        self.cancel = cancel or threading.Event()

    # -- top level -------------------------------------------------------------

    def run(self, src: str, dst: str) -> None:
        """Copy *src* (on the source side) to *dst* (on the destination side).

        Raises:
            CopyError: naming the path that failed and why.
            Cancelled: :attr:`cancel` was set.
        """
        contents = src.endswith("/")
        src_parent_path, src_name = split(src)
        if contents or src_name is None:
            # "SRC/": the directory SRC names, symlinks followed (inside its root), then its entries.
            src_dir = self._open_top(self.source, src, DIR_FLAGS, src)
            try:
                dst_dir = self._dest_dir(dst)
                try:
                    self._copy_children(src_dir, dst_dir, src.rstrip("/"), dst.rstrip("/"), 1)
                finally:
                    os.close(dst_dir)
            finally:
                os.close(src_dir)
            return
        src_parent = self._open_top(self.source, src_parent_path, DIR_FLAGS, src)
        try:
            st = self._lstat(src_parent, src_name, src)
            dst_parent, dst_name, dst_shown = self._dest_slot(
                dst, src_name, stat.S_ISDIR(st.st_mode)
            )
            try:
                self._copy(src_parent, src_name, st, dst_parent, dst_name, src, dst_shown, 0)
            finally:
                os.close(dst_parent)
        finally:
            os.close(src_parent)

    def _open_top(self, side: Side, path: str, flags: int, shown: str) -> int:
        try:
            return side.open(path, flags)
        except OSError as exc:
            raise CopyError(shown, exc.errno or errno.EIO) from None

    def _dest_dir(self, dst: str) -> int:
        """The directory *dst* (symlinks followed on its side), created if its last component is missing."""
        try:
            return self.dest.open(dst, DIR_FLAGS)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise CopyError(dst, exc.errno or errno.EIO) from None
        parent_path, name = split(dst)
        assert name is not None  # "/" always exists
        parent = self._open_top(self.dest, parent_path, DIR_FLAGS, dst)
        try:
            return self._make_dir(parent, name, 0o755, dst)
        finally:
            os.close(parent)

    def _dest_slot(self, dst: str, src_name: str, src_is_dir: bool) -> tuple[int, str, str]:
        """(parent fd, name, path shown in errors) where the copied entry goes."""
        parent_path, name = split(dst)
        if src_is_dir or dst.endswith("/") or name is None or self._is_dir(dst):
            return self._dest_dir(dst), src_name, f"{dst.rstrip('/')}/{src_name}"
        return self._open_top(self.dest, parent_path, DIR_FLAGS, dst), name, dst

    def _is_dir(self, path: str) -> bool:
        try:
            os.close(self.dest.open(path, DIR_FLAGS))
        except OSError:
            return False
        return True

    # -- one entry -------------------------------------------------------------

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def _lstat(self, dirfd: int, name: str, shown: str) -> os.stat_result:
        """lstat of an entry on the source side."""
        try:
            with self.source.acting():
                return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except OSError as exc:
            raise CopyError(shown, exc.errno or errno.EIO) from None

    def _copy(
        self,
        src_dir: int,
        name: str,
        st: os.stat_result,
        dst_dir: int,
        dst_name: str,
        src_shown: str,
        dst_shown: str,
        depth: int,
    ) -> None:
        self._check()
        if stat.S_ISLNK(st.st_mode):
            self._copy_symlink(src_dir, name, dst_dir, dst_name, src_shown, dst_shown)
        elif stat.S_ISREG(st.st_mode):
            self._copy_file(src_dir, name, dst_dir, dst_name, src_shown, dst_shown)
        elif stat.S_ISDIR(st.st_mode):
            if depth >= MAX_DEPTH:
                raise CopyError(
                    src_shown, errno.ELOOP, f"nested deeper than {MAX_DEPTH} directories"
                )
            self._copy_dir(src_dir, name, dst_dir, dst_name, src_shown, dst_shown, depth)
        # sockets, fifos and device nodes are skipped (see the module docstring)

    def _copy_symlink(
        self, src_dir: int, name: str, dst_dir: int, dst_name: str, src_shown: str, dst_shown: str
    ) -> None:
        try:
            with self.source.acting():
                target = os.readlink(name, dir_fd=src_dir)
        except OSError as exc:
            raise CopyError(src_shown, exc.errno or errno.EIO) from None
        self._clear(dst_dir, dst_name, dst_shown, want_dir=False)
        try:
            with self.dest.acting():
                os.symlink(target, dst_name, dir_fd=dst_dir)
                os.chown(
                    dst_name, self.owner.uid, self.owner.gid, dir_fd=dst_dir, follow_symlinks=False
                )
        except OSError as exc:
            raise CopyError(dst_shown, exc.errno or errno.EIO) from None

    def _copy_file(
        self, src_dir: int, name: str, dst_dir: int, dst_name: str, src_shown: str, dst_shown: str
    ) -> None:
        try:
            with self.source.acting():
                src = os.open(name, READ_FLAGS, dir_fd=src_dir)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a symlink since the lstat: copy that instead
                return self._copy_symlink(src_dir, name, dst_dir, dst_name, src_shown, dst_shown)
            raise CopyError(src_shown, exc.errno or errno.EIO) from None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return  # swapped for a special file since the lstat: skipped like one
            self._clear(dst_dir, dst_name, dst_shown, want_dir=False)
            try:
                with self.dest.acting():
                    dst = os.open(dst_name, CREATE_FLAGS, 0o600, dir_fd=dst_dir)
            except OSError as exc:
                raise CopyError(dst_shown, exc.errno or errno.EIO) from None
            try:
                with self.dest.acting():  # the writer's rights (a disk's root reserve...)
                    self._copy_data(src, dst, src_shown, dst_shown)
                try:
                    with self.dest.acting():
                        # chown first: it clears the setuid/setgid bits the chmod then sets.
                        os.fchown(dst, self.owner.uid, self.owner.gid)
                        os.fchmod(dst, self.owner.mode(st.st_mode))
                except OSError as exc:
                    raise CopyError(dst_shown, exc.errno or errno.EIO) from None
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _copy_data(self, src: int, dst: int, src_shown: str, dst_shown: str) -> None:
        use_sendfile = True
        while True:
            self._check()
            try:
                if use_sendfile:
                    n = os.sendfile(dst, src, None, CHUNK)
                else:
                    chunk = os.read(src, CHUNK)
                    n = len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(dst, view) :]
            except OSError as exc:
                if use_sendfile and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    use_sendfile = False  # e.g. a filesystem without splice support
                    continue
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
                    raise CopyError(dst_shown, exc.errno) from None
                raise CopyError(f"{src_shown} -> {dst_shown}", exc.errno or errno.EIO) from None
            if n == 0:
                return

    def _copy_dir(
        self,
        src_parent: int,
        name: str,
        dst_parent: int,
        dst_name: str,
        src_shown: str,
        dst_shown: str,
        depth: int,
    ) -> None:
        try:
            with self.source.acting():
                src = os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=src_parent)
        except OSError as exc:
            raise CopyError(src_shown, exc.errno or errno.EIO) from None
        try:
            st = os.fstat(src)
            dst = self._make_dir(dst_parent, dst_name, 0o700, dst_shown)
            try:
                self._copy_children(src, dst, src_shown, dst_shown, depth + 1)
                try:
                    with self.dest.acting():
                        os.fchmod(dst, self.owner.mode(st.st_mode))
                except OSError as exc:
                    raise CopyError(dst_shown, exc.errno or errno.EIO) from None
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _copy_children(
        self, src: int, dst: int, src_shown: str, dst_shown: str, depth: int
    ) -> None:
        try:
            with self.source.acting():
                entries = os.scandir(src)
        except OSError as exc:
            raise CopyError(src_shown or "/", exc.errno or errno.EIO) from None
        with entries:
            for entry in entries:
                child_src, child_dst = f"{src_shown}/{entry.name}", f"{dst_shown}/{entry.name}"
                st = self._lstat(src, entry.name, child_src)
                self._copy(src, entry.name, st, dst, entry.name, child_src, child_dst, depth)

    # -- destination entries ---------------------------------------------------

    def _make_dir(self, parent: int, name: str, mode: int, shown: str) -> int:
        """Open directory *name* in *parent* (made and given the owner if missing; never a symlink)."""
        with self.dest.acting():
            return self._make_dir_here(parent, name, mode, shown)

    def _make_dir_here(self, parent: int, name: str, mode: int, shown: str) -> int:
        self._clear(parent, name, shown, want_dir=True)
        created = False
        try:
            os.mkdir(name, mode, dir_fd=parent)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise CopyError(shown, exc.errno or errno.EIO) from None
        try:
            fd = os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
            if created:
                os.fchown(fd, self.owner.uid, self.owner.gid)
        except OSError as exc:
            raise CopyError(shown, exc.errno or errno.EIO) from None
        return fd

    def _clear(self, parent: int, name: str, shown: str, want_dir: bool) -> None:
        """Remove what is at *name* unless it is a directory and a directory is wanted."""
        with self.dest.acting():
            self._clear_here(parent, name, shown, want_dir)

    def _clear_here(self, parent: int, name: str, shown: str, want_dir: bool) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CopyError(shown, exc.errno or errno.EIO) from None
        try:
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=parent)
            elif not want_dir:
                os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise CopyError(
                    shown, errno.EISDIR, "a non-empty directory is in the way"
                ) from None
            raise CopyError(shown, exc.errno or errno.EIO) from None
