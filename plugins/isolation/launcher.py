"""``corral-init launch``, started early: it makes the namespaces while the daemon prepares.

The launcher unshares first and only then reads its spec from stdin (see
README.md here). Started when the container's preparation begins, it spends
the time the other plugins take (layers, cgroups) making the new namespaces in
a process of its own; :meth:`Launcher.finish` then sends the spec and waits
for the init's pid.

posix_spawn (a vfork) with memfds for stdout and stderr costs half a
``subprocess.Popen`` and leaves no pipe to drain. The launcher gets an empty
environment: the init keeps it, and the daemon's has no business in a container.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

#: Bytes of the launcher's stdout (a pid) or stderr (one error message) read.
MAX_OUTPUT = 64 * 1024


class Launcher:
    """One running ``corral-init launch``, waiting for its spec."""

    def __init__(self, init: Path, container_path: Path) -> None:
        self.pid: int | None = None
        spec_read, self._spec = os.pipe2(os.O_CLOEXEC)
        self._out = os.memfd_create("stdout", os.MFD_CLOEXEC)
        self._err = os.memfd_create("stderr", os.MFD_CLOEXEC)
        try:
            self.pid = os.posix_spawn(
                init,
                [str(init), "launch", str(container_path)],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, fd, target)
                    for target, fd in enumerate((spec_read, self._out, self._err))
                ],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python, not by C
                setsigmask=(),
            )
        except BaseException:
            self.close()
            raise
        finally:
            os.close(spec_read)
        os.set_blocking(self._spec, False)

    async def finish(self, spec: bytes) -> tuple[int, bytes, bytes]:
        """Send *spec*; wait for the launcher to exit: its exit code, stdout and stderr."""
        assert self.pid is not None
        view = memoryview(spec)
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
        for fd in (self._spec, self._out, self._err):
            if fd >= 0:
                os.close(fd)
        self._spec = self._out = self._err = -1
