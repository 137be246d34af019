"""The daemon's side of the init protocol (README.md beside this file).

One ``SOCK_SEQPACKET`` connection per container: requests go one at a time and
get one reply each; ``exit`` messages arrive at any moment and are published on
the event bus. A pidfd of the init tells when the whole container is gone.
"""

from __future__ import annotations

import array
import dataclasses
import os
import signal
import socket
from functools import partial
from pathlib import Path
from typing import NoReturn

import structlog
import trio

from supervisor.api import (
    ContainerView,
    CorralError,
    InvalidRequest,
    InvalidState,
    JobExited,
    JobRequest,
    OutputCut,
    SandboxExited,
)

RECEIVE_SIZE = 64 * 1024
#: What an init from before the output pumps answers a spawn with limit= (corral_init.c).
OLD_INIT = "spawn: bad or unknown field"
#: Longest wait for a killed init's launcher to exit (it exits microseconds after the
#: init is ready): a destroy must not hang on it.
REAP_PATIENCE = 10.0
#: Reap attempts: each after the zombie init changed parent, which it does once.
REAP_TRIES = 8

log = structlog.get_logger()


def encode(*parts: str) -> bytes:
    """A message: NUL-terminated strings (undecodable bytes kept via surrogateescape)."""
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in parts)


def decode(packet: bytes) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in packet.split(b"\0")[:-1]]


def spawn_message(request: JobRequest) -> bytes:
    """The ``spawn`` message for *request*."""
    parts = ["spawn", f"id={request.job_id}", f"privileged={int(request.privileged)}"]
    if request.user is not None:
        parts.append(f"user={request.user}")
    if request.dir is not None:
        parts.append(f"dir={request.dir}")
    parts += [f"env={name}={value}" for name, value in request.env]
    for name, soft, hard in request.rlimits:
        parts.append(
            f"rlimit={name}:{'unlimited' if soft is None else soft}:{'unlimited' if hard is None else hard}"
        )
    if request.stdin:
        parts.append("stdin=1")
    if request.tty is not None:
        parts.append(f"tty={request.tty[0]}:{request.tty[1]}")
    if request.output_limit is not None:
        parts.append(f"limit={request.output_limit}")
    parts += [f"arg={arg}" for arg in request.argv]
    return encode(*parts)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a process from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class InitSandbox:
    """A running ``corral-init``, as the core's :class:`~supervisor.api.Sandbox`."""

    def __init__(
        self,
        container: ContainerView,
        pid: int,
        pidfd: int | None,
        sock: trio.socket.SocketType | None,
        owned: bool = False,
    ) -> None:
        """
        Args:
            owned: the init is (or is about to become) the daemon's child, which must
                reap it: one it launched, not one a previous daemon left.
        """
        self.container = container
        self.pid = pid
        self._pidfd = pidfd
        self._owned = owned
        self._reaped = False
        self._sock = sock
        # The daemon's own reference to the container's mount namespace (see kill).
        self._mount_namespace: int | None = None
        if pidfd is not None:
            try:
                self._mount_namespace = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # the init is gone already
        self._lock = trio.Lock()
        # Each reply with the fds that came with it (only ``input`` sends one).
        self._replies_send, self._replies = trio.open_memory_channel[tuple[list[str], list[int]]](1)
        self._alive = pidfd is not None and sock is not None
        self._terminated = False  # killed on purpose: its exit is no news

    @property
    def alive(self) -> bool:
        return self._alive

    async def serve(self) -> None:
        """Read replies and exit messages; watch the init's pidfd. Runs for the sandbox's life."""
        if not self._alive:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            await self._wait_exit()
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        assert self._sock is not None
        with self._replies_send:
            while True:
                try:
                    packet, ancillary, _, _ = await self._sock.recvmsg(
                        RECEIVE_SIZE, socket.CMSG_SPACE(array.array("i").itemsize)
                    )
                except OSError:
                    packet, ancillary = b"", []
                fds = received_fds(ancillary)
                if not packet:
                    return  # the init is gone; _wait_exit reports it
                parts = decode(packet)
                if parts and parts[0] == "exit":
                    await self.container.publish(
                        JobExited(self.container.handle, int(parts[1]), int(parts[2]))
                    )
                elif parts[:1] == ["cut"] and len(parts) == 3:
                    await self.container.publish(
                        OutputCut(self.container.handle, int(parts[1]), parts[2])
                    )
                else:
                    await self._replies_send.send((parts, fds))

    async def _wait_exit(self) -> None:
        assert self._pidfd is not None
        await trio.lowlevel.wait_readable(self._pidfd)
        self._alive = False
        await self.reap()
        if not self._terminated:
            log.warning("container init exited", handle=self.container.handle, pid=self.pid)
            await self.container.publish(SandboxExited(self.container.handle))

    async def reap(self) -> None:
        """Collect the exited init's status if it is ours, so that no zombie is left.

        The init is its launcher's child until the launcher exits, a moment after
        the init is ready; only then does the daemon (a subreaper) adopt it. An
        init killed in that moment is reaped once its launcher has gone.
        """
        for _ in range(REAP_TRIES):
            if self._pidfd is None or self._reaped:
                return
            try:
                self._reaped = (
                    os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG) is not None
                )
                return
            except ChildProcessError:
                if not self._owned:
                    return  # a previous daemon's: the host's init reaps it
            launcher = _foster_parent(self.pid)
            if launcher is None:
                continue  # it is ours now, or gone (reaped by this sandbox's other waiter)
            try:
                with trio.move_on_after(REAP_PATIENCE) as waited:
                    await trio.lowlevel.wait_readable(launcher)
            finally:
                os.close(launcher)
            if waited.cancelled_caught:
                log.warning(
                    "container init left unreaped: its launcher does not exit", pid=self.pid
                )
                return

    def terminate(self) -> None:
        """SIGKILL the init: its namespaces, mounts and processes go with it."""
        if self._pidfd is None:
            return
        self._terminated = True
        try:
            signal_pidfd(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def kill(self) -> None:
        """SIGKILL the init and wait for it.

        Its mounts outlive it: the daemon still holds the mount namespace, whose
        teardown unmounts the root overlay, and an overlay's unmount syncs the
        whole filesystem of its writable layer (the host's, usually), about as
        long as the rest of a destroy. The daemon drops that reference after
        destroy has replied (``Container.after_destroy``); only then are the
        mounts gone, and the container's directory deleted.
        """
        if self._pidfd is None:
            return
        self.terminate()
        await trio.lowlevel.wait_readable(self._pidfd)
        self._alive = False
        await self.reap()

    def close(self) -> None:
        """Close what the daemon holds; the mount namespace after destroy, unless detaching."""
        if self._sock is not None:
            self._sock.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._mount_namespace is not None:
            if self.container.detaching:  # the init lives on, and holds it
                os.close(self._mount_namespace)
            else:
                self.container.after_destroy(partial(os.close, self._mount_namespace))
            self._mount_namespace = None

    async def _request(self, message: bytes, fds: tuple[int, ...] = ()) -> list[str]:
        parts, received = await self._request_fds(message, fds)
        for fd in received:
            os.close(fd)
        return parts

    async def _request_fds(
        self, message: bytes, fds: tuple[int, ...] = ()
    ) -> tuple[list[str], list[int]]:
        if not self._alive or self._sock is None:
            raise InvalidState(f"container {self.container.handle}: its init is not running")
        async with self._lock:
            ancillary = (
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            )
            try:
                await self._sock.sendmsg([message], ancillary)
                return await self._replies.receive()
            except (OSError, trio.EndOfChannel, trio.ClosedResourceError):
                raise InvalidState(
                    f"container {self.container.handle}: its init is not running"
                ) from None

    async def spawn(
        self, request: JobRequest, stdout: int, stderr: int, status: int, join: tuple[int, ...] = ()
    ) -> None:
        reply = await self._request(spawn_message(request), (stdout, stderr, status, *join))
        if reply[:1] == ["error"] and request.output_limit is not None and OLD_INIT in reply[2:3]:
            # An init started before an upgrade (it knows no limit=): the job writes to
            # its files directly, without a cap; said once per job.
            self.container.log.warning(
                "container init too old to cap output; job output not capped",
                job_id=request.job_id,
            )
            request = dataclasses.replace(request, output_limit=None)
            reply = await self._request(spawn_message(request), (stdout, stderr, status, *join))
        if reply[:1] == ["error"]:
            raise InvalidRequest(
                f"container {self.container.handle}: job {request.job_id}: {reply[2]}"
            )

    async def signal_job(self, job_id: int, signum: int, pid: int | None = None) -> bool:
        if not self._alive:
            return False
        target = () if pid is None else (str(pid),)
        reply = await self._request(encode("signal", str(job_id), str(signum), *target))
        if reply[:1] == ["ok"]:
            return True
        if reply[-1:] == ["signal: no such job"]:  # its leader was reaped meanwhile
            return False
        raise InvalidRequest(
            f"container {self.container.handle}: job {job_id}: {reply[-1].removeprefix('signal: ')}"
        )

    async def job_input(self, job_id: int) -> int:
        reply, fds = await self._request_fds(encode("input", str(job_id)))
        if reply[:1] == ["ok"] and len(fds) == 1:
            return fds[0]
        for fd in fds:
            os.close(fd)
        self._input_error(job_id, reply)

    async def close_input(self, job_id: int) -> None:
        reply = await self._request(encode("eof", str(job_id)))
        if reply[:1] != ["ok"]:
            self._input_error(job_id, reply)

    def _input_error(self, job_id: int, reply: list[str]) -> NoReturn:
        what = f"container {self.container.handle}: job {job_id}"
        if reply[-1:] == ["input: the job has no stdin"]:
            raise InvalidRequest(f"{what} has no stdin")
        if reply[-1:] == ["input: closed"]:
            raise InvalidState(f"{what}: its stdin is closed")
        raise InvalidState(f"{what} has ended")

    async def signal_all(self, signum: int) -> bool:
        if not self._alive:
            return False
        return (await self._request(encode("killall", str(signum))))[:1] == ["ok"]

    async def configure_interface(
        self, name: str, address: str, prefixlen: int, gateway: str | None
    ) -> None:
        reply = await self._request(
            encode("ifconfig", name, address, str(prefixlen), gateway or "-")
        )
        if reply[:1] != ["ok"]:
            raise InterfaceError(f"container {self.container.handle}: {reply[-1]}")

    async def running_jobs(self) -> set[int]:
        reply = await self._request(encode("jobs"))
        return {int(job_id) for job_id in reply[1:]}


class InterfaceError(CorralError):
    """The container's init could not configure a network device."""


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of an SCM_RIGHTS message."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _foster_parent(pid: int) -> int | None:
    """A pidfd of the parent of zombie *pid* (its launcher), or None if that is the daemon,
    or *pid* is gone, or the parent has just exited.

    The parent is read again once its pidfd is open: had the launcher exited meanwhile
    (and its pid been reused), the init's parent would be the daemon by then.
    """
    parent = _parent_of(pid)
    if parent is None or parent == os.getpid():
        return None
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:
        return None
    if _parent_of(pid) == parent:
        return pidfd
    os.close(pidfd)
    return None


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def signal_pidfd(pidfd: int, signum: int) -> None:
    """``pidfd_send_signal``: no pid-reuse race, unlike ``kill``."""
    signal.pidfd_send_signal(pidfd, signum)
