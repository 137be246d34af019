"""The plugin API of Corral: every hook a plugin may implement.

A plugin is any object or module with functions named after these hooks and
marked with :data:`hookimpl`. Built-in plugins (``plugins.fs``,
``plugins.cgroups``, ``plugins.isolation``, ``plugins.net``) are registered
first, in that order; third-party plugins come from the entry-point group
``corral``. A plugin is kept out by naming it in ``[plugins] block`` of the
config or in the environment variable ``CORRAL_BLOCK_PLUGINS`` (comma list).

Hooks are synchronous (pluggy), but a hook may return an *awaitable* or an
*async context manager*, which the core then awaits or enters. Hooks that
return something are called for every plugin, in registration order; none of
them stops at the first result.

Building a container happens in three phases, each a hook returning an async
context manager per plugin; all of them are entered in one exit stack, so a
failure at any step releases what the earlier steps acquired, in reverse, and
``destroy`` is the same unwinding:

1. :func:`corral_container_prepare`: host-side resources, before any process
   of the container exists; contribute to the :class:`~supervisor.sandbox.LaunchPlan`.
2. :func:`corral_container_launch`: exactly one plugin starts the sandbox.
3. :func:`corral_container_attach`: work on the running sandbox.

After a daemon restart the same hooks are called with ``restoring=True``: the
plugin must then re-adopt what it already owns for this container (it finds it
in ``container.plugin_state``), acquire nothing new, and tolerate missing pieces,
because a container half-created when the daemon died is restored only to be
released again.

On exit, a context manager releases its kernel resources unless
``container.detaching`` is true: the daemon is shutting down and the container
lives on, so only what the daemon process itself holds is closed. Files a
plugin keeps in the container's directory (``container.path``) need no
release: the core removes the directory after every context has exited.
Whatever a plugin must find again after a crash goes in
``container.plugin_state(NAME)``, saved with ``container.save()`` before the
resource exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from supervisor.commands import Handler
    from supervisor.config import Config
    from supervisor.container import Container
    from supervisor.sandbox import LaunchPlan, Limit, Sandbox

PROJECT = "corral"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator marking a plugin's hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def corral_configure(config: Config) -> None:
    """Read this plugin's settings at daemon start.

    :param config: the whole daemon configuration; a plugin reads its own table
        with ``config.section(NAME)``.

    Raise :class:`supervisor.config.ConfigError` naming the setting for a bad value:
    the daemon then refuses to start.
    """


@hookspec
def corral_startup(live_handles: frozenset[str]) -> Awaitable[None] | None:
    """Prepare host-wide resources and remove leftovers after the containers were restored.

    :param live_handles: the handles of every container the daemon restored;
        anything the plugin finds on the host that belongs to another handle is a
        leftover of a crash and should be removed.
    """


@hookspec
def corral_shutdown() -> Awaitable[None] | None:
    """Release host-wide resources of the daemon process itself before it exits.

    Containers outlive the daemon: do not touch them here.
    """


@hookspec
def corral_create_options() -> Mapping[str, Callable[[Any], Any]] | None:
    """Claim keys of the ``create`` CONFIG object.

    :return: a mapping from key to a validator; the validator gets the client's
        value and returns the normalized value kept in ``container.options``, or
        raises :class:`supervisor.errors.InvalidRequest` naming the key and reason.
        A key no plugin (nor the core) claims is rejected.
    """


@hookspec
def corral_container_prepare(
    container: Container, plan: LaunchPlan, restoring: bool
) -> AbstractAsyncContextManager[None] | None:
    """Acquire host-side resources for a container before its first process runs.

    :param container: the container being built (``born``) or restored.
    :param plan: the launch plan to contribute to (root mount, mounts, cgroups);
        also filled when restoring, so the launch plugin sees the same plan.
        Plugins called after ``isolation`` (registered after it: every
        third-party one) may add mounts but not change the root, root mount or
        host mounts, which its launcher is already making.
    :param restoring: re-adopt existing resources instead of acquiring new ones.
    :return: an async context manager whose exit releases what it acquired.
    """


@hookspec
def corral_container_launch(
    container: Container, plan: LaunchPlan, restoring: bool
) -> AbstractAsyncContextManager[Sandbox] | None:
    """Start (or, restoring, reconnect to) the container's sandbox from the plan.

    Exactly one registered plugin implements this (the built-in ``isolation``).

    :param container: the container being built or restored.
    :param plan: the launch plan the prepare phase filled.
    :param restoring: reconnect to the running sandbox instead of starting one.

    :return: an async context manager yielding the :class:`~supervisor.sandbox.Sandbox`;
        its exit kills every process of the container.
    """


@hookspec
def corral_container_attach(
    container: Container, restoring: bool
) -> AbstractAsyncContextManager[None] | None:
    """Acquire resources that need the running sandbox (``container.sandbox``).

    :param container: the container being built or restored; its sandbox runs.
    :param restoring: re-adopt existing resources instead of acquiring new ones.
    :return: an async context manager whose exit releases what it acquired.
    """


@hookspec
def corral_container_info(
    container: Container,
) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Contribute fields (e.g. stats) to the ``info`` reply of a container.

    :param container: the container asked about.
    :return: a mapping merged into the reply, or an awaitable of one; a ``limits``
        mapping is merged key by key with other plugins' limits.
    """


@hookspec
def corral_commands() -> Mapping[str, Handler] | None:
    """Add protocol commands.

    :return: a mapping from command name to an async handler
        ``handler(request, *args)``; see :mod:`supervisor.commands`.
    """


@hookspec
def corral_spare_directories() -> Mapping[str, int] | None:
    """Name directories the plugin makes in each container's directory at prepare.

    :return: a mapping from name (a child of ``container.path``) to mode. The
        core makes them, empty and with that mode, in the directories it keeps
        for later creates (see :mod:`supervisor.depot`); so the plugin must
        accept finding one there (``mkdir(exist_ok=True)``).
    """


@hookspec
def corral_limit_resources() -> Mapping[str, Limit] | None:
    """Provide resources for the ``limit`` command.

    :return: a mapping from resource name (``mem``, ``cpus``...) to a
        :class:`~supervisor.sandbox.Limit` that reads and writes it. A plugin
        reports the values in force in ``info`` under ``limits`` itself.
    """


@hookspec
def corral_container_kill(container: Container) -> Awaitable[None] | None:
    """Kill every process of the container except its init, so that none escapes by forking.

    Called when a container is stopped with KILL (after the TERM grace, or at
    once), before the core asks the init to signal what is left.

    :param container: the container being stopped.
    """
