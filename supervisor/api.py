"""The plugin API: everything a Corral plugin may use, in one module.

::

    from supervisor.api import ContainerView, InvalidRequest, LaunchPlan, Mount, hookimpl

A plugin is a class whose methods marked with :data:`hookimpl` implement hooks of
:mod:`supervisor.hookspecs` (where each hook's contract is written). The daemon
makes one object of it at start, passing the ``__init__`` parameters it names:
``settings``, the plugin's config table parsed into the class that parameter
is annotated with (a frozen dataclass of :func:`setting` fields), and
``config``, the core's :class:`Config`. Per-container data goes in
``container.stash`` under a :class:`StashKey` of the plugin's own; what must
survive a daemon restart goes in ``container.plugin_state(NAME)``.

The built-in plugins import nothing else from the core (a test holds them to
it); what is not here may change without notice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from supervisor.config import Config
from supervisor.container import State
from supervisor.credentials import Credentials
from supervisor.errors import (
    CorralError,
    InvalidRequest,
    InvalidState,
    LimitExceeded,
    NoCapacity,
    UnknownHandle,
    UnknownJob,
)
from supervisor.events import (
    Event,
    GraceExpired,
    JobExited,
    JobStarted,
    LimitChanged,
    MemoryPressure,
    NetRuleChanged,
    OutOfMemory,
    OutputCut,
    SandboxExited,
    StateChanged,
)
from supervisor.fds import close_soon
from supervisor.hookspecs import hookimpl
from supervisor.protocol import Args
from supervisor.requests import BUCKETS, CommandStats, RequestStats
from supervisor.sandbox import (
    JobDefaults,
    JobGroup,
    JobRequest,
    LaunchPlan,
    Limit,
    Mount,
    NetworkNamespace,
    Sandbox,
)
from supervisor.settings import (
    ConfigError,
    absolute_path,
    choice,
    names,
    positive_int,
    seconds,
    setting,
)
from supervisor.stash import Stash, StashKey

__all__ = [
    "Args",
    "BUCKETS",
    "CommandStats",
    "Config",
    "ConfigError",
    "close_soon",
    "ContainerView",
    "CorralError",
    "Credentials",
    "DaemonView",
    "Event",
    "GraceExpired",
    "Handler",
    "InvalidRequest",
    "InvalidState",
    "JobDefaults",
    "JobExited",
    "JobGroup",
    "JobRequest",
    "JobStarted",
    "LaunchPlan",
    "Limit",
    "LimitChanged",
    "LimitExceeded",
    "MemoryPressure",
    "Mount",
    "NetRuleChanged",
    "NetworkNamespace",
    "NoCapacity",
    "OutOfMemory",
    "OutputCut",
    "Request",
    "RequestStats",
    "Sandbox",
    "SandboxExited",
    "Stash",
    "StashKey",
    "State",
    "StateChanged",
    "UnknownHandle",
    "UnknownJob",
    "absolute_path",
    "choice",
    "context_nursery",
    "hookimpl",
    "names",
    "positive_int",
    "seconds",
    "setting",
]


class ContainerView(Protocol):
    """A container as plugins see it: what they may read and the few things they may do."""

    @property
    def handle(self) -> str:
        """The container's name, unique in this daemon."""

    @property
    def options(self) -> Mapping[str, Any]:
        """The ``create`` CONFIG, normalized by the validators of ``corral_create_options``."""

    @property
    def path(self) -> Path:
        """The container's directory in the depot: the core deletes it after destroy."""

    @property
    def state(self) -> State:
        """The lifecycle state (born, active, stopped, destroyed)."""

    @property
    def sandbox(self) -> Sandbox | None:
        """The running sandbox, from the launch plugin (None before launch and after it ended)."""

    @property
    def detaching(self) -> bool:
        """True while the daemon shuts down: release what the daemon process holds, not
        the kernel resources; the container lives on for the next daemon."""

    @property
    def stash(self) -> Stash:
        """In-memory data of the plugins for this container, by :class:`StashKey`."""

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger with the container's handle bound."""

    def plugin_state(self, plugin: str) -> dict[str, Any]:
        """The persisted, JSON-able scratch space of *plugin* (call :meth:`save` after a change)."""

    def save(self) -> None:
        """Write the container's record, plugin states included, to the depot (atomically)."""

    def require(self, operation: str) -> None:
        """Raise :class:`InvalidState` unless *operation* (``spawn``, ``copy``...) is allowed now."""

    async def publish(self, event: Event) -> None:
        """Put an event about this container on the core's event bus."""

    def after_destroy(self, cleanup: Callable[[], None]) -> None:
        """Have the core run the blocking *cleanup* in a worker thread after destroy has replied,
        before it deletes :attr:`path` (see ``docs/plugins.md``)."""


class DaemonView(Protocol):
    """The whole daemon as plugins may read it (given to ``corral_startup``)."""

    def live(self) -> Sequence[ContainerView]:
        """The containers clients see (active, paused or stopped)."""

    async def info(self, container: ContainerView) -> dict[str, Any]:
        """The ``info`` payload of *container*, as the ``info`` command gives it.

        Raises:
            UnknownHandle: the container is gone.
        """

    async def stats(self, containers: Sequence[ContainerView]) -> dict[str, dict[str, Any]]:
        """The figures of many containers at once, by handle: ``state`` and ``job_ids`` as
        ``info`` gives them, ``jobs_running`` (how many of those jobs have not exited, as
        far as the daemon knows: ``link`` would wait for them), and the tables of counters
        and gauges the plugins give in
        ``corral_containers_stats`` (``memory_stat``, ``cpu_stat``, ``pids``, ``disk_stat``,
        ``net_stat``). A container destroyed meanwhile is left out.
        """

    @property
    def requests(self) -> RequestStats:
        """The requests served since the daemon started, by command."""

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` for as long as the daemon runs (a server, a periodic writer).

        It is cancelled when the daemon stops, before the plugins' ``corral_shutdown``;
        an exception it raises is logged and ends only that task.
        """


class Request(Protocol):
    """What a command handler gets besides the request's arguments."""

    @property
    def credentials(self) -> Credentials:
        """Who sent the request: pid, uid, gid and supplementary groups of the client
        process, as the kernel recorded them when it connected (``SO_PEERCRED``,
        ``SO_PEERGROUPS``). A handler that touches the host on the client's behalf
        acts with them, unless :attr:`Credentials.root` (see the ``fs`` plugin's ``copy``).
        """

    def container(self, handle: Any) -> ContainerView:
        """The live container named *handle* (now referenced by this connection).

        Raises:
            UnknownHandle: no live container has that handle.
        """

    async def send(self, line: bytes) -> None:
        """Send an extra reply line before the handler's return value (as ``stream`` does)."""


#: A protocol command: ``await handler(request, *args)`` returns the reply's payload,
#: or raises a :class:`CorralError`, which becomes the error reply.
Handler = Callable[..., Awaitable[Any]]


@asynccontextmanager
async def context_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a plugin's container context, letting a lone error out as itself.

    The container's later phases fail *through* a prepare or attach context
    (errors are thrown in at its ``yield``); the core and the client should see
    that error, not an exception group holding it.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
