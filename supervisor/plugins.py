"""The plugin manager and a typed facade over ``pm.hook``.

Built-in plugins are imported by module name (the core does not import them
statically) and registered before third-party ones from the entry-point group
``corral``; blocked names are never registered.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pluggy
import trio

from supervisor import hookspecs

if TYPE_CHECKING:
    from supervisor.commands import Handler
    from supervisor.config import Config
    from supervisor.container import Container
    from supervisor.sandbox import LaunchPlan, Limit, Sandbox

#: Built-in plugins, by name, in registration (and so call) order. Isolation
#: comes right after fs: once fs has planned the root, the launcher isolation
#: starts at prepare makes the namespaces and mounts the root while the others
#: prepare.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("fs", "plugins.fs"),
    ("isolation", "plugins.isolation"),
    ("cgroups", "plugins.cgroups"),
    ("net", "plugins.net"),
)

BLOCK_ENV = "CORRAL_BLOCK_PLUGINS"


def blocked_names(config: Config) -> set[str]:
    """Names blocked by the config or by ``CORRAL_BLOCK_PLUGINS``."""
    from_env = {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",")}
    return (set(config.plugins.block) | from_env) - {""}


def make_plugin_manager(config: Config) -> pluggy.PluginManager:
    """Register the built-in plugins, then the entry-point ones, minus blocked names."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked_names(config):
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm


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


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Hooks:
    """Named, typed calls of the hooks; results come in registration order."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook

    def plugin_names(self) -> list[str]:
        """Registered plugin names, in registration order."""
        return [name for name, _ in self.pm.list_name_plugin()]

    def _call(self, name: str, **kwargs: Any) -> list[Any]:
        # pluggy calls the last registered first; reverse to registration order.
        results = getattr(self._hook, name)(**kwargs)
        return [r for r in reversed(results) if r is not None]

    def configure(self, config: Config) -> None:
        self._call("corral_configure", config=config)

    async def startup(self, live_handles: frozenset[str]) -> None:
        for result in self._call("corral_startup", live_handles=live_handles):
            await _resolve(result)

    async def shutdown(self) -> None:
        for result in self._call("corral_shutdown"):
            await _resolve(result)

    def _merged(self, name: str) -> dict[str, Any]:
        """The mappings every plugin returns from hook *name*, in one (later plugins win)."""
        merged: dict[str, Any] = {}
        for mapping in self._call(name):
            merged.update(mapping)
        return merged

    def spare_directories(self) -> dict[str, int]:
        return self._merged("corral_spare_directories")

    def create_options(self) -> dict[str, Callable[[Any], Any]]:
        return self._merged("corral_create_options")

    def prepare(
        self, container: Container, plan: LaunchPlan, restoring: bool
    ) -> list[AbstractAsyncContextManager[None]]:
        return self._call(
            "corral_container_prepare", container=container, plan=plan, restoring=restoring
        )

    def launch(
        self, container: Container, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[Sandbox]:
        launchers = self._call(
            "corral_container_launch", container=container, plan=plan, restoring=restoring
        )
        if len(launchers) != 1:
            raise RuntimeError(
                f"exactly one plugin must implement corral_container_launch, found {len(launchers)}"
            )
        return launchers[0]

    def attach(
        self, container: Container, restoring: bool
    ) -> list[AbstractAsyncContextManager[None]]:
        return self._call("corral_container_attach", container=container, restoring=restoring)

    async def info(self, container: Container) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for result in self._call("corral_container_info", container=container):
            for key, value in (await _resolve(result)).items():
                if key == "limits" and isinstance(value, dict):
                    merged.setdefault("limits", {}).update(value)  # several plugins own limits
                else:
                    merged[key] = value
        return merged

    def commands(self) -> dict[str, Handler]:
        return self._merged("corral_commands")

    def limit_resources(self) -> dict[str, Limit]:
        return self._merged("corral_limit_resources")

    async def kill(self, container: Container) -> None:
        for result in self._call("corral_container_kill", container=container):
            await _resolve(result)
