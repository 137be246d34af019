"""Types shared between the core and the plugins that build a container.

A container is built in three phases (see :mod:`supervisor.hookspecs`):
*prepare* plugins fill a :class:`LaunchPlan` (root filesystem, mounts, cgroups);
the one *launch* plugin turns the plan into a running :class:`Sandbox` (the
container's init); *attach* plugins then work on the running sandbox (e.g. move
a network device into it). The core carries these objects but never looks
inside a mount or a cgroup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Mount:
    """One mount to make inside the container before its first process runs.

    ``target`` is a path inside the container (``/`` is the root itself) and is
    always resolved inside the container root. ``source`` of a bind mount is a
    host path. ``flags`` are words such as ``bind``, ``rec``, ``ro``, ``nosuid``,
    ``nodev``, ``noexec``, ``mkdir``, ``mkfile``, ``optional``.
    """

    fstype: str
    source: str
    target: str
    flags: tuple[str, ...] = ()
    data: str | None = None


@dataclass(frozen=True)
class NetworkNamespace:
    """A container's network namespace as the launch plugin offers it before the init runs."""

    #: An fd of the namespace (e.g. for ``IFLA_NET_NS_FD``).
    fd: int
    #: A ``NETLINK_ROUTE`` socket opened inside the namespace: rtnetlink requests
    #: on it configure the namespace's devices, addresses and routes.
    route_socket: int


@dataclass
class JobDefaults:
    """What a job gets when neither its request nor the create CONFIG says otherwise.

    A prepare plugin fills it (the ``images`` plugin, from the image's config);
    the core applies it to every job of the container.
    """

    #: ``(NAME, VALUE)`` pairs, before the create's ``env`` and the job's own.
    env: list[tuple[str, str]] = field(default_factory=list)
    #: The working directory (absolute), when the job names none.
    dir: str | None = None
    #: The user (a name or uid), when the job names none.
    user: str | None = None


@dataclass
class LaunchPlan:
    """What the sandbox must set up before the container's first process runs."""

    #: Host directory that becomes the container's ``/``.
    root_dir: Path
    #: The mount that makes the root filesystem (e.g. an overlay on ``root_dir``).
    root_mount: Mount | None = None
    #: Further mounts (bind mounts...), made in order after the system mounts.
    mounts: list[Mount] = field(default_factory=list)
    #: cgroup membership files (``cgroup.procs``, v1 ``tasks``) the launcher joins
    #: by writing ``0`` (itself) before it forks the init.
    cgroup_procs: list[Path] = field(default_factory=list)
    #: Set during prepare by a launch plugin that can: waits until the container's
    #: network namespace exists, then gives it (fds the launch plugin owns, open
    #: until the prepare phase is undone), or None if it never will. A prepare
    #: plugin may then work in the namespace while the sandbox sets up (the net
    #: plugin makes and configures the container's veth); otherwise it waits for
    #: the sandbox.
    network_namespace: Callable[[], Awaitable[NetworkNamespace | None]] | None = None
    #: Read-only directories stacked as the root's lower layers, bottom first, set by a
    #: prepare plugin before ``fs`` (the ``images`` plugin: an image's unpacked layers);
    #: empty: ``fs`` uses the rootfs directory.
    root_layers: list[Path] = field(default_factory=list)
    #: Defaults for the container's jobs (see :class:`JobDefaults`).
    job_defaults: JobDefaults = field(default_factory=JobDefaults)


@dataclass(frozen=True)
class JobRequest:
    """A job to start in a sandbox: ``argv`` run with the given identity and setup."""

    job_id: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    dir: str | None = None
    user: str | None = None
    privileged: bool = False
    rlimits: tuple[tuple[str, int | None, int | None], ...] = ()
    #: A pipe for stdin, which the sandbox keeps (see :meth:`Sandbox.job_input`).
    stdin: bool = False
    #: A terminal of (rows, cols) for stdin, stdout and stderr, which the sandbox keeps.
    tty: tuple[int, int] | None = None
    #: The client's label for the job (spawn OPTS ``log_tag``): in its events and log lines.
    log_tag: str | None = None
    #: Bytes kept per output stream, None for no limit. The sandbox enforces it itself,
    #: whoever of the job writes (a background child after its first process exited),
    #: and publishes :class:`supervisor.events.OutputCut` when it cuts.
    output_limit: int | None = None


@runtime_checkable
class JobGroup(Protocol):
    """A job's own group of processes (a cgroup per job), as a plugin provides it: what
    makes per-job limits and accounting exact while other jobs run in the container."""

    #: Open files the job's first process writes ``0`` to before it runs anything
    #: (``cgroup.procs``), so it and everything it starts are in the group. The
    #: caller passes them with the spawn, then calls :meth:`close`.
    join_fds: tuple[int, ...]

    def close(self) -> None:
        """Close :attr:`join_fds` (once the job was started, or failed to)."""

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by every process of the job (None if unknown)."""

    def usage(self) -> dict[str, float | int | None]:
        """``cpu_user``, ``cpu_system``, ``cpu_total`` (seconds) and ``memory_peak``
        (bytes) of the job and everything it started; None where not measured."""

    def empty(self) -> bool:
        """Whether no process of the job is left."""

    def kill(self) -> None:
        """SIGKILL every process of the job (some may be left to a next call if they forked)."""

    def remove(self) -> None:
        """Remove the group, once empty (blocking; for a worker thread)."""


@runtime_checkable
class Sandbox(Protocol):
    """A running container init, as the launch plugin yields it.

    Job exits are announced as :class:`supervisor.events.JobExited` on the bus.
    """

    #: Host pid of the container's init.
    pid: int

    @property
    def alive(self) -> bool:
        """Whether the init still runs."""

    async def spawn(
        self, request: JobRequest, stdout: int, stderr: int, status: int, join: tuple[int, ...] = ()
    ) -> None:
        """Start a job whose output goes to the given fds; *status* receives its exit status.

        The job's first process joins the groups of *join* (:attr:`JobGroup.join_fds`)
        before it runs anything.

        Raises:
            InvalidRequest: the job could not be set up (unknown user, bad dir...).
            InvalidState: the init is gone.
        """

    async def signal_job(self, job_id: int, signum: int, pid: int | None = None) -> bool:
        """Send *signum* to the job's process group, or to its process *pid* (a pid
        inside the sandbox, which must belong to the job).

        Returns:
            False if the job's leader has ended (nothing was sent), else True.

        Raises:
            InvalidRequest: *pid* is no process of the job.
        """

    async def job_input(self, job_id: int) -> int:
        """A new fd of the job's input (its stdin pipe's write end, or its terminal's
        master), which the sandbox keeps for the job's life; the caller closes its fd.

        Raises:
            InvalidState: the job's leader has ended, or its stdin was closed.
            InvalidRequest: the job has no stdin.
        """

    async def close_input(self, job_id: int) -> None:
        """Close the sandbox's end of the job's stdin pipe (EOF once every copy is closed)."""

    async def signal_all(self, signum: int) -> bool:
        """Send *signum* to every process but the init; False when none is left."""

    def terminate(self) -> None:
        """Start killing the init and with it the whole sandbox, without waiting.

        Destroy calls it first, so the kernel tears the sandbox down while the
        plugins release the rest; the launch plugin's context still waits for the end.
        """

    async def running_jobs(self) -> set[int]:
        """Ids of the jobs whose leader still runs."""

    async def configure_interface(
        self, name: str, address: str, prefixlen: int, gateway: str | None
    ) -> None:
        """Give network device *name* inside the sandbox an IPv4 address, bring it up,
        and route by *gateway* (if any).

        Raises:
            CorralError: the kernel refused; the message names the device and the step.
        """


@runtime_checkable
class Limit(Protocol):
    """One resource of the ``limit`` command (``mem``, ``cpus``...), as a plugin provides it."""

    async def read(self, container: Any) -> Any:
        """The value in force for *container* (None when unlimited)."""

    async def write(self, container: Any, value: Any) -> Any:
        """Check and apply *value*; return the value now in force.

        Raises:
            InvalidRequest: the value is bad; nothing was changed.
        """
