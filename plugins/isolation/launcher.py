"""``corral-init launch``, started early: it makes the namespaces while the daemon prepares.

The launcher unshares first and only then reads its spec from stdin (see
README.md here). Started as soon as the fs plugin has planned the root, it
spends the time the other plugins take (cgroups, network) in a process of its
own: :meth:`Launcher.send` gives it the container's set-up at once, which it
applies while the daemon makes the cgroups; :meth:`Launcher.finish` sends the
rest (the plan's own mounts, the cgroups, ``end``) and waits for the init's
pid. The launcher closes its fd 3, a pipe, once it has unshared:
:meth:`Launcher.network_namespace` waits for that, so the net plugin can make
the container's veth meanwhile.

posix_spawn (a vfork) with memfds for stdout and stderr costs half a
``subprocess.Popen`` and leaves no pipe to drain. The launcher gets an empty
environment: the init keeps it, and the daemon's has no business in a container.

A spawned process is queued on its parent's CPU. Measured on 2-vCPU VMs, the
launcher then started only when the daemon blocked, 1.3 ms later, instead of
on the idle CPU: so the daemon moves it off its own CPU (:func:`_run_elsewhere`),
and the launcher widens its affinity again before it forks the init.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

import trio

#: Bytes of the launcher's stdout (a pid) or stderr (one error message) read.
MAX_OUTPUT = 64 * 1024

_libc = ctypes.CDLL(None)


def _run_elsewhere(pid: int) -> None:
    """Let process *pid* run on any CPU the daemon may use but the one it runs on now."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) > 1:
        os.sched_setaffinity(pid, allowed - {_libc.sched_getcpu()})


class Launcher:
    """One running ``corral-init launch``, waiting for its spec."""

    def __init__(self, init: Path, container_path: Path) -> None:
        self.pid: int | None = None
        self._netns: int | None = None
        self._unsent = b""
        spec_read, self._spec = os.pipe2(os.O_CLOEXEC)
        self._unshared, unshared_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._out = os.memfd_create("stdout", os.MFD_CLOEXEC)
        self._err = os.memfd_create("stderr", os.MFD_CLOEXEC)
        try:
            self.pid = os.posix_spawn(
                init,
                [str(init), "launch", str(container_path)],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, fd, target)
                    for target, fd in enumerate((spec_read, self._out, self._err, unshared_write))
                ],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python, not by C
                setsigmask=(),
            )
            _run_elsewhere(self.pid)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(spec_read)
            os.close(unshared_write)
        os.set_blocking(self._spec, False)

    async def network_namespace(self) -> int | None:
        """An fd of the container's network namespace once the launcher made it (None: it failed).

        The fd stays open until :meth:`close`.
        """
        if self._unshared >= 0:
            await trio.lowlevel.wait_readable(self._unshared)  # EOF: it closed its end
            self._close_unshared()
            try:
                fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None  # it died before unsharing; finish() tells why
            if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
                os.close(fd)  # never expected; but nothing may be plumbed into the host's
                return None
            self._netns = fd
        return self._netns

    def _close_unshared(self) -> None:
        trio.lowlevel.notify_closing(self._unshared)
        os.close(self._unshared)
        self._unshared = -1

    def send(self, part: bytes) -> None:
        """Send a first part of the spec, as much as the pipe takes now; :meth:`finish` the rest."""
        self._unsent += part
        try:
            self._unsent = self._unsent[os.write(self._spec, self._unsent) :]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self._unsent = b""  # it failed; finish() tells why

    async def finish(self, part: bytes) -> tuple[int, bytes, bytes]:
        """Send the last part of the spec; wait for the launcher to exit: its exit code, stdout and stderr."""
        assert self.pid is not None
        view = memoryview(self._unsent + part)
        self._unsent = b""
        try:
            while view:
                try:
                    view = view[os.write(self._spec, view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._spec)
        except BrokenPipeError:
            pass  # it failed before reading it all; its stderr says why
        os.close(self._spec)
        self._spec = -1
        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        returncode = self._reap(os.WNOHANG)
        return (
            returncode if returncode is not None else -1,
            os.pread(self._out, MAX_OUTPUT, 0),
            os.pread(self._err, MAX_OUTPUT, 0),
        )

    def _reap(self, flags: int = 0) -> int | None:
        if self.pid is None:
            return None
        pid, status = os.waitpid(self.pid, flags)
        if pid == 0:
            return None
        self.pid = None
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Kill the launcher if it still runs (the container was never launched); free its fds.

        An init it forked already is in the container's cgroups, whose removal kills it.
        """
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self._reap()
        if self._unshared >= 0:
            self._close_unshared()
        for fd in (self._spec, self._out, self._err, self._netns):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._spec = self._out = self._err = -1
        self._netns = None
