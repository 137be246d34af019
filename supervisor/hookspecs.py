"""The hooks of Corral: every hook a plugin may implement, each with its contract.

A plugin is a class (see :mod:`supervisor.api`) whose methods marked with
``hookimpl`` are named after these hooks; a method may take any subset of the
hook's parameters. Built-in plugins (``images``, ``fs``, ``isolation``,
``cgroups``, ``net``, ``metrics``) are registered first, in that order; third-party plugins come after,
from the entry-point group ``corral``. Blocked names (``[plugins] block``,
``CORRAL_BLOCK_PLUGINS``) are never loaded.

Calls: every hook is called for every plugin that implements it, in
registration order, and none stops at the first result. ``tryfirst``,
``trylast`` and wrappers are refused at start: the order is the registration
order. Hooks are synchronous (pluggy); a hook that must wait returns an
*awaitable* or an *async context manager*, which the core awaits or enters.
At start the daemon refuses to run when a hook is implemented that is not
here, when not exactly one plugin implements :func:`corral_container_launch`,
and when two plugins (or a plugin and the core) claim the same create option,
command, limit resource or spare directory; the message names both.

Building a container happens in three phases, each a hook returning an async
context manager per plugin; all of them are entered in one exit stack, so a
failure at any step releases what the earlier steps acquired, in reverse, and
``destroy`` is the same unwinding:

1. :func:`corral_container_prepare`: host-side resources, before any process
   of the container exists; contribute to the :class:`~supervisor.api.LaunchPlan`.
2. :func:`corral_container_launch`: the one launch plugin starts the sandbox.
3. :func:`corral_container_attach`: work on the running sandbox.

After a daemon restart the same hooks are called with ``restoring=True``: the
plugin must then re-adopt what it already owns for this container (it finds it
in ``container.plugin_state(NAME)``), acquire nothing new, and tolerate missing
pieces, because a container half-created when the daemon died is restored only
to be released again.

On exit, a context manager releases its kernel resources unless
``container.detaching`` is true: the daemon is shutting down and the container
lives on, so only what the daemon process itself holds is closed. Files a
plugin keeps in the container's directory (``container.path``) need no
release: the core removes the directory after every context has exited.

Channels between plugins (there are no others; a plugin's own data stays in
``container.stash`` under its own key):

- The launch plan (:class:`~supervisor.api.LaunchPlan`), from the prepare
  plugins to the launch plugin: the root filesystem, mounts and cgroups the
  sandbox is made of. The ``fs`` plugin plans the root; plugins prepared after
  the launch plugin's own prepare (``isolation``, second) may add mounts but not
  change the root, the root mount or the ``host`` mounts.
- ``LaunchPlan.root_layers``, from a prepare plugin before ``fs`` (``images``)
  to ``fs``: read-only directories, bottom first, that ``fs`` stacks as the root
  overlay's lower layers instead of the rootfs directory.
- ``LaunchPlan.job_defaults``, from the prepare plugins to the core: the Env,
  working directory and user every job of the container gets unless its
  request (or the create's ``env``) says otherwise.
- ``LaunchPlan.network_namespace``, from the launch plugin to the prepare
  plugins after it: set in its prepare when it can make the container's
  network namespace ahead of the sandbox; awaiting it gives the namespace (or
  None). The ``net`` plugin makes and configures the container's veth in it
  while the sandbox sets up.
- ``container.sandbox``, from the launch plugin to attach, info, kill and
  command handlers: the running init (:class:`~supervisor.api.Sandbox`).
- Events on the bus (``container.publish``), from plugins to the core:
  :class:`~supervisor.api.JobExited` and :class:`~supervisor.api.SandboxExited`
  from the launch plugin, :class:`~supervisor.api.OutOfMemory` from ``cgroups``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from supervisor.api import ContainerView, DaemonView, Handler
    from supervisor.sandbox import JobGroup, LaunchPlan, Limit, Sandbox

PROJECT = "corral"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- the daemon ---------------------------------------------------------------------


@hookspec
def corral_startup(live_handles: frozenset[str], daemon: DaemonView) -> Awaitable[None] | None:
    """Prepare host-wide resources and remove leftovers, after the containers were restored.

    Called once at start, for every plugin in registration order, each awaited
    before the next; the socket opens after the last. An exception stops the
    daemon (the restored containers are detached, not destroyed).

    :param live_handles: the handles of every container the daemon restored;
        anything the plugin finds on the host that belongs to another handle is a
        leftover of a crash and should be removed.
    :param daemon: what a plugin may use of the whole daemon for as long as it
        runs (its containers, their ``info``, the requests served, tasks of the
        plugin's own for the daemon's life); keep it.
    """


@hookspec
def corral_shutdown() -> Awaitable[None] | None:
    """Release host-wide resources of the daemon process itself before it exits.

    Called once at a clean stop (SIGTERM, SIGINT), after every container was
    detached and every ``after_destroy`` clean-up ran, for every plugin in
    registration order. Containers outlive the daemon: do not touch them here.
    An exception is logged and the next plugin's shutdown still runs.
    """


# -- declarations, read once at start ---------------------------------------------------


@hookspec
def corral_create_options() -> Mapping[str, Callable[[Any], Any]] | None:
    """Claim keys of the ``create`` CONFIG object.

    Called once at start. A key claimed by two plugins, or by a plugin and the
    core (``handle``, ``grace_time``, ``properties``, ``env``), refuses the start.
    A key no plugin (nor the core) claims is refused at create.

    :return: a mapping from key to a validator; at each create that has the key,
        the validator gets the client's value and returns the normalized value
        kept in ``container.options``, or raises
        :class:`~supervisor.api.InvalidRequest` naming the key and the reason
        (the create then fails with it, before anything is built).
    """


@hookspec
def corral_commands() -> Mapping[str, Handler] | None:
    """Add protocol commands.

    Called once at start. A name claimed by two plugins, or by a plugin and the
    core, refuses the start.

    :return: a mapping from command name to an async handler
        ``handler(request, *args)`` (:data:`~supervisor.api.Handler`). Its return
        value is the reply's payload; a :class:`~supervisor.api.CorralError` it
        raises is the error reply, any other exception replies ``internal`` and
        is logged.
    """


@hookspec
def corral_limit_resources() -> Mapping[str, Limit] | None:
    """Provide resources for the ``limit`` command.

    Called once at start. A resource claimed by two plugins refuses the start.
    A plugin reports the values in force in ``info`` under ``limits`` itself.

    :return: a mapping from resource name (``mem``, ``cpus``...) to a
        :class:`~supervisor.api.Limit` that reads and writes it.
    """


@hookspec
def corral_spare_directories() -> Mapping[str, int] | None:
    """Name directories the plugin makes in each container's directory at prepare.

    Called once at start. A name claimed by two plugins refuses the start.

    :return: a mapping from name (a child of ``container.path``) to mode. The
        core makes them, empty and with that mode, in the directories it keeps
        for later creates (see :mod:`supervisor.depot`); so the plugin must
        accept finding one there (``mkdir(exist_ok=True)``).
    """


# -- a container's life ------------------------------------------------------------------


@hookspec
def corral_container_prepare(
    container: ContainerView, plan: LaunchPlan, restoring: bool
) -> AbstractAsyncContextManager[None] | None:
    """Acquire host-side resources for a container before its first process runs.

    Called at each create and restore, for every plugin in registration order;
    each context is entered before the next plugin is called. An exception (from
    the call or the entering) fails the create with that error (a
    :class:`~supervisor.api.CorralError` keeps its code, anything else is
    ``internal``); the contexts entered before exit in reverse order.

    :param container: the container being built (``born``) or restored.
    :param plan: the launch plan to contribute to (see "Channels" above); also
        filled when restoring, so the launch plugin sees the same plan.
    :param restoring: re-adopt existing resources instead of acquiring new ones.
    :return: an async context manager whose exit releases what it acquired.
    """


@hookspec
def corral_container_launch(
    container: ContainerView, plan: LaunchPlan, restoring: bool
) -> AbstractAsyncContextManager[Sandbox] | None:
    """Start (or, restoring, reconnect to) the container's sandbox from the plan.

    Exactly one registered plugin implements this (the built-in ``isolation``);
    the daemon refuses to start otherwise. Called after every prepare context
    was entered; an exception fails the create as in prepare.

    :param container: the container being built or restored.
    :param plan: the launch plan the prepare phase filled.
    :param restoring: reconnect to the running sandbox instead of starting one.
    :return: an async context manager yielding the :class:`~supervisor.api.Sandbox`
        (the core sets it as ``container.sandbox``); its exit kills every
        process of the container, unless ``container.detaching``.
    """


@hookspec
def corral_container_attach(
    container: ContainerView, restoring: bool
) -> AbstractAsyncContextManager[None] | None:
    """Acquire resources that need the running sandbox (``container.sandbox``).

    Called after the launch, for every plugin in registration order, as prepare
    is; an exception fails the create as in prepare, and the launch context and
    every prepare context exit too.

    :param container: the container being built or restored; its sandbox runs.
    :param restoring: re-adopt existing resources instead of acquiring new ones.
    :return: an async context manager whose exit releases what it acquired.
    """


@hookspec
def corral_container_info(
    container: ContainerView,
) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Contribute fields (e.g. stats) to the ``info`` reply of a container.

    Called at each ``info``, for every plugin in registration order. The
    mappings are merged into the core's fields: a later plugin's key replaces
    an earlier one, except ``limits``, merged key by key. An exception fails
    the request (``internal`` unless it is a :class:`~supervisor.api.CorralError`).

    :param container: the container asked about.
    :return: a mapping merged into the reply, or an awaitable of one.
    """


@hookspec
def corral_containers_stats(
    containers: Sequence[ContainerView],
) -> Mapping[str, Mapping[str, Any]] | Awaitable[Mapping[str, Mapping[str, Any]]] | None:
    """Read the usage figures of many containers at once (for the metrics).

    Called once per reading (``DaemonView.stats``: a metrics scrape) with every
    container to read, for every plugin in registration order; the awaitables
    returned then run concurrently (so a plugin's worker-thread job overlaps the
    next plugin's reading), and the mappings are merged per container in
    registration order, a later plugin's key replacing an earlier one. The
    figures are the tables of counters and gauges the plugin puts in ``info``
    (``memory_stat``, ``cpu_stat``, ``pids``, ``disk_stat``, ``net_stat``...),
    with the same keys, units and meaning, read now; nothing else of ``info``
    (no ``limits`` table, addresses or options). Where a figure is not read anew
    (a limit the plugin set and recorded, a usage kept for a few seconds), the
    plugin's docs say so, as for ``info``. Reading many at once lets a plugin
    share work between them: one file for every device, one worker-thread job
    for every tree to walk. A container that is gone or half-restored gets
    None values, as in ``info``, and never fails the others. An exception fails
    the reading (``internal`` unless it is a :class:`~supervisor.api.CorralError`).

    :param containers: the live containers to read (each one's figures for its handle).
    :return: a mapping from handle to that container's tables, or an awaitable of
        one; a handle left out has none of this plugin's figures.
    """


@hookspec
def corral_container_freeze(container: ContainerView, frozen: bool) -> Awaitable[None] | None:
    """Stop (``pause``) or let run again (``resume``) every process of the container.

    Called for every plugin in registration order, each awaited; a plugin that
    cannot freeze this container returns None. When none returns an awaitable,
    ``pause`` is refused (``invalid_request``: nothing here can freeze). An
    exception fails the request; on a failed pause the core thaws again. The
    core also thaws a paused container before it stops or destroys it.

    :param container: the container paused or resumed.
    :param frozen: True to freeze, False to thaw.
    """


@hookspec(firstresult=True)
def corral_job_group(container: ContainerView, job_id: int, create: bool) -> JobGroup | None:
    """Give a job a group of its own (a cgroup), for its limits and its accounting.

    Called at each spawn (*create*), before the job starts, and for each job found
    again after a daemon restart; stops at the first non-None result. Without
    one, spawn OPTS ``timeout`` and ``cpu_time`` are refused (``invalid_request``)
    and the ``usage`` report has only the wall time. An exception fails the spawn.

    :param container: the container of the job.
    :param job_id: the job's id (unique in the container, never reused).
    :param create: make the group (a spawn), else find the existing one (a restore).
    :return: the :class:`~supervisor.api.JobGroup`, or None (none made, or none found).
    """


@hookspec
def corral_container_kill(container: ContainerView) -> Awaitable[None] | None:
    """Kill every process of the container except its init, so that none escapes by forking.

    Called when a container is stopped with KILL (after the TERM grace, or at
    once), for every plugin in registration order, each awaited, before the
    core asks the sandbox to signal what is left. An exception fails the
    ``stop`` request.

    :param container: the container being stopped.
    """
