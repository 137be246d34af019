"""``corral-init launch``, started early: it makes the namespaces while the daemon prepares.

The launcher unshares first and only then reads its spec from stdin (see
README.md here). Started as soon as the fs plugin has planned the root, it
spends the time the other plugins take (cgroups, network) in a process of its
own: :meth:`Launcher.send` gives it the container's set-up at once, which it
applies while the daemon makes the cgroups; :meth:`Launcher.finish` sends the
rest (the plan's own mounts, the cgroups, ``end``) and waits until the init is
ready.

Its fd 3 is the other end of a ``SOCK_SEQPACKET`` pair, the *control socket*:
the launcher sends the new network namespace on it as soon as it has unshared
(:meth:`Launcher.network_namespace`, so the net plugin makes the container's
veth meanwhile), then the init's pid; the init says ``ready`` on it and serves
it as the daemon's connection (:meth:`Launcher.take_connection`). So the
daemon neither waits for the launcher to exit nor connects to the init.

A :class:`Zygote` (``corral-init zygote``, one per daemon) forks each
launcher: a request on a socket instead of a spawn and an exec, which blocked
the daemon for 0.3 ms and took the launcher another 0.3 ms to start. It forks
one ahead (:meth:`Zygote.fork_ahead`): that launcher makes its namespaces,
the network one above all (half a millisecond), before any container needs
it, then waits for a spec; the mount namespace comes with the spec, so the
container sees the host's mounts as they are then. The launcher's label (its
cmdline, by which the daemon finds its inits) comes with the spec too.
Without a zygote, the launcher is spawned: posix_spawn (a vfork) with a memfd
for stderr costs half a ``subprocess.Popen`` and leaves no pipe to drain.
Either way the launcher gets an empty environment: the init keeps it, and the
daemon's has no business in a container.

A spawned process is queued on its parent's CPU. Measured on 2-vCPU VMs, the
launcher then started only when the daemon blocked, 1.3 ms later, instead of
on the idle CPU: so the daemon moves it off its own CPU (:func:`_run_elsewhere`),
and the launcher widens its affinity again before it forks the init.
"""

from __future__ import annotations

import array
import ctypes
import os
import select
import signal
import socket
from pathlib import Path

import trio

from supervisor.api import NetworkNamespace

#: What the init puts before a failure in the container's root (corral_init.c IN_ROOT):
#: caused by the client's rootfs or bind mounts.
IN_ROOT = "in the container root: "
#: Bytes of the launcher's stderr (one error message) read.
MAX_OUTPUT = 64 * 1024
#: Longest message on the control socket (``init PID``).
MAX_MESSAGE = 256
#: Bytes of argument space kept for a launcher's label (its cmdline).
LABEL_ROOM = 512
#: Signals set to their default in the zygote and a spawned launcher: the init's
#: jobs start from them (corral_init.c resets only what the init itself changed).
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

_libc = ctypes.CDLL(None)


def _run_elsewhere(pid: int, avoided: int | None = None) -> int:
    """Let process *pid* run on any CPU the daemon may use but the one it runs on now.

    Returns that CPU; nothing is changed if it is *avoided* already.
    """
    here = int(_libc.sched_getcpu())
    allowed = os.sched_getaffinity(0)
    if here != avoided and len(allowed) > 1:
        os.sched_setaffinity(pid, allowed - {here})
    return here


class LaunchError(Exception):
    """The launcher failed; the message is its own (one line, naming the step)."""


class Zygote:
    """One ``corral-init zygote``, started on first use, forking launchers on request."""

    def __init__(self, init: Path) -> None:
        self.init = init
        self.pid: int | None = None
        self._sock: socket.socket | None = None
        self._avoided: int | None = None  # the daemon's CPU, which the zygote is kept off
        self._ahead: Launcher | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = os.posix_spawn(
                self.init,
                [str(self.init), "zygote", "-" * LABEL_ROOM],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
                ],
                setsigdef=DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._avoided = None
        return ours

    def launcher(self) -> Launcher:
        """A launcher for a new container: the one forked ahead if it still waits, else a new one.

        Raises:
            OSError: the zygote could not be started or reached.
        """
        launcher, self._ahead = self._ahead, None
        if launcher is not None and launcher.waiting():
            return launcher
        if launcher is not None:
            launcher.close()
        return Launcher(self.init, self)

    def fork_ahead(self) -> None:
        """Fork the next container's launcher now (if none waits), so that its namespaces
        are made before it is needed. Call it when the daemon's CPUs are quiet."""
        if self._ahead is None:
            try:
                self._ahead = Launcher(self.init, self)
            except OSError:
                pass  # the next create forks its own and reports the error

    def fork_launcher(self, spec: int, stderr: int, control: int) -> None:
        """Have the zygote fork a launcher with these fds as its stdin, stderr and fd 3.

        Raises:
            OSError: the zygote could not be started or reached (twice).
        """
        message = b"launch"
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", (spec, stderr, control)))]
        for attempt in (1, 2):
            sock = self._sock or self._start()
            try:
                # Woken by the daemon, the zygote would run (and fork) on the daemon's
                # CPU, before the daemon goes on; its launchers inherit the affinity.
                assert self.pid is not None
                self._avoided = _run_elsewhere(self.pid, self._avoided)
                sock.sendmsg([message], fds)
                return
            except OSError:
                self.close()  # it died: a new one, once
                if attempt == 2:
                    raise

    def close(self) -> None:
        """Stop the zygote (it exits when its socket closes) and the launcher forked ahead;
        launchers in use go on."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass  # reaped by someone else already
            self.pid = None


class Launcher:
    """One running ``corral-init launch``, waiting for its spec."""

    def __init__(self, init: Path, zygote: Zygote | None = None) -> None:
        """Start ``INIT launch``, forked by *zygote* if given, else spawned.

        A forked launcher is the zygote's child: :attr:`pid` stays None.
        """
        self.pid: int | None = None
        self._namespace: NetworkNamespace | None = None
        self._namespace_asked = False
        self._first_message = trio.Lock()
        self._unsent = b""
        spec_read, self._spec = os.pipe2(os.O_CLOEXEC)
        control, launcher_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control.setblocking(False)
        self._control: socket.socket | None = control
        self._err = os.memfd_create("stderr", os.MFD_CLOEXEC)
        try:
            if zygote is not None:
                zygote.fork_launcher(spec_read, self._err, launcher_end.fileno())
            else:
                self.pid = os.posix_spawn(
                    init,
                    [str(init), "launch", "-" * LABEL_ROOM],
                    {},
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_DUP2, spec_read, 0),
                        (os.POSIX_SPAWN_DUP2, self._err, 2),
                        (os.POSIX_SPAWN_DUP2, launcher_end.fileno(), 3),
                    ],
                    setsigdef=DEFAULT_SIGNALS,
                    setsigmask=(),
                )
                _run_elsewhere(self.pid)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(spec_read)
            launcher_end.close()
        os.set_blocking(self._spec, False)

    async def _receive(self) -> tuple[list[bytes], list[int]]:
        """The next message on the control socket: its strings and fds (no strings: EOF)."""
        assert self._control is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(
                    self._control, MAX_MESSAGE, 2, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._control)
                continue
            except OSError:
                return [], []
            return data.split(b"\0")[:-1], fds

    async def network_namespace(self) -> NetworkNamespace | None:
        """The container's network namespace once the launcher made it (None: it failed).

        Its fds stay open until :meth:`close`.
        """
        async with self._first_message:
            if not self._namespace_asked:
                self._namespace_asked = True
                words, fds = await self._receive()
                if words == [b"netns"] and len(fds) == 2 and not _is_ours(fds[0]):
                    self._namespace = NetworkNamespace(*fds)
                else:  # it died before unsharing (finish() tells why), or never expected
                    for fd in fds:
                        os.close(fd)
        return self._namespace

    def waiting(self) -> bool:
        """Whether the launcher still waits for its spec (it did not die meanwhile)."""
        poller = select.poll()
        poller.register(self._spec, select.POLLOUT)
        return not any(events & select.POLLERR for _, events in poller.poll(0))

    def send(self, part: bytes) -> None:
        """Send a first part of the spec, as much as the pipe takes now; :meth:`finish` the rest."""
        self._unsent += part
        try:
            self._unsent = self._unsent[os.write(self._spec, self._unsent) :]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self._unsent = b""  # it failed; finish() tells why

    async def finish(self, part: bytes) -> int:
        """Send the last part of the spec; wait until the init is ready: its host pid.

        Raises:
            LaunchError: with the launcher's own message.
        """
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
        await self.network_namespace()  # the first message, whoever asks for it
        pid, ready = None, False
        while pid is None or not ready:  # "init PID" (the launcher), "ready" (the init)
            words, fds = await self._receive()
            for fd in fds:
                os.close(fd)
            if not words:
                raise LaunchError(await self._failure())
            if words[0] == b"init" and len(words) == 2 and words[1].isdigit():
                pid = int(words[1])
            elif words == [b"ready"]:
                ready = True
        return pid

    async def _failure(self) -> str:
        """Wait for the failed launcher to exit: its error message."""
        code = await self.wait()
        message = os.pread(self._err, MAX_OUTPUT, 0).decode(errors="replace").strip()
        if message:
            return message
        return "the launcher exited without a message" if code is None else f"exit status {code}"

    def take_connection(self) -> socket.socket:
        """The control socket, served by the ready init from now on: the daemon's connection."""
        sock, self._control = self._control, None
        assert sock is not None
        return sock

    async def wait(self) -> int | None:
        """Wait until the launcher exited and reap it: its exit code (it exits once the init is ready)."""
        if self.pid is None:
            return None
        pidfd = os.pidfd_open(self.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return self._reap()

    def _reap(self) -> int | None:
        if self.pid is None:
            return None
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Kill the launcher if it still runs (the container was never launched); free its fds.

        An init it forked already is in the container's cgroups, whose removal kills it.
        """
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self._reap()
        if self._control is not None:
            trio.lowlevel.notify_closing(self._control)
            self._control.close()
            self._control = None
        for fd in (self._spec, self._err):
            if fd >= 0:
                os.close(fd)
        self._spec = self._err = -1
        if self._namespace is not None:
            os.close(self._namespace.fd)
            os.close(self._namespace.route_socket)
            self._namespace = None


def _is_ours(netns: int) -> bool:
    """Whether *netns* is the daemon's own network namespace (never expected; nothing may be plumbed there)."""
    return os.fstat(netns).st_ino == os.stat("/proc/self/ns/net").st_ino
