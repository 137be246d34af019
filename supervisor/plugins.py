"""The plugin manager: loads the plugins strictly, and calls their hooks through typed methods.

:func:`load_plugins` imports the built-in plugins by name (the core imports no
plugin statically), then the entry points of the group ``corral``, skipping
blocked names, and makes each plugin object with its parsed settings.
:class:`Hooks` checks the whole set before the daemon serves (see
:mod:`supervisor.hookspecs` for the rules) and calls the hooks in registration
order. Any problem is a :class:`PluginError` (or a ``ConfigError`` for a bad
setting): one line naming the plugin, and the daemon does not start.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy
import structlog
import trio

from supervisor import hookspecs
from supervisor.config import Config
from supervisor.settings import ConfigError, parse_table

if TYPE_CHECKING:
    from supervisor.api import ContainerView, DaemonView, Handler
    from supervisor.sandbox import JobGroup, LaunchPlan, Limit, Sandbox

log = structlog.get_logger()

#: Built-in plugins, by name, in registration (and so call) order, as
#: ``module:class``. Images comes first: it gives fs an image's layers to
#: stack (``LaunchPlan.root_layers``). Isolation comes right after fs: once fs has planned the
#: root, the launcher isolation starts at prepare makes the namespaces and
#: mounts the root while the others prepare.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("images", "plugins.images:ImagesPlugin"),
    ("fs", "plugins.fs:FilesystemPlugin"),
    ("isolation", "plugins.isolation:IsolationPlugin"),
    ("cgroups", "plugins.cgroups:CgroupsPlugin"),
    ("net", "plugins.net:NetworkPlugin"),
    ("metrics", "plugins.metrics:MetricsPlugin"),
)

BLOCK_ENV = "CORRAL_BLOCK_PLUGINS"

#: The hook every container needs exactly one implementation of.
LAUNCH_HOOK = "corral_container_launch"


class PluginError(Exception):
    """A plugin cannot be loaded, or clashes with another: the daemon refuses to start."""


def blocked_names(config: Config) -> set[str]:
    """Names blocked by the config or by ``CORRAL_BLOCK_PLUGINS``."""
    from_env = {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",")}
    return (set(config.plugins.block) | from_env) - {""}


def _how_to_block(name: str) -> str:
    return f'block it with [plugins] block = ["{name}"] or {BLOCK_ENV}={name}'


def settings_class(plugin: Any) -> type | None:
    """The class a plugin class's ``settings`` parameter is annotated with (its table), if any."""
    if not isinstance(plugin, type) or "settings" not in inspect.signature(plugin).parameters:
        return None
    declared: type = typing.get_type_hints(getattr(plugin, "__init__"))["settings"]  # noqa: B009
    return declared


def make_plugin(name: str, loaded: Any, config: Config) -> Any:
    """The plugin object of *loaded*: a class is made with the parameters its ``__init__``
    names, of ``settings`` (the table ``[name]`` parsed into :func:`settings_class`) and
    ``config``; a module or an object is the plugin itself.

    Raises:
        ConfigError: the table ``[name]`` holds a bad value, or the plugin takes none.
    """
    table = config.tables.get(name, {})
    declared = settings_class(loaded)
    if table and declared is None:
        raise ConfigError(f"[{name}]: plugin {name} takes no settings")
    if not isinstance(loaded, type):
        return loaded
    arguments: dict[str, Any] = {}
    if declared is not None:
        arguments["settings"] = parse_table(declared, table, name)
    if "config" in inspect.signature(loaded).parameters:
        arguments["config"] = config
    return loaded(**arguments)


def _import(name: str, target: str) -> Any:
    module, _, attributes = target.partition(":")
    try:
        loaded = importlib.import_module(module)
        for attribute in filter(None, attributes.split(".")):
            loaded = getattr(loaded, attribute)
        return loaded
    except Exception as exc:
        raise PluginError(
            f"plugin {name} ({target}) failed to load: {type(exc).__name__}: {exc}; "
            + _how_to_block(name)
        ) from None


def new_manager() -> pluggy.PluginManager:
    """A pluggy manager with Corral's hookspecs and no plugin."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    config: Config,
    builtins: Iterable[tuple[str, str]] = BUILTIN_PLUGINS,
    entry_points: bool = True,
) -> pluggy.PluginManager:
    """Register the built-in plugins, then the entry-point ones, minus blocked names.

    Raises:
        PluginError: a plugin failed to import or to start, or two have one name.
        ConfigError: a plugin's table holds a bad value, or a table belongs to no plugin.
    """
    pm = new_manager()
    blocked = blocked_names(config)
    candidates = list(builtins)
    if entry_points:
        candidates += [
            (ep.name, ep.value) for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT)
        ]
    for name, target in candidates:
        if name in blocked:
            continue
        if pm.has_plugin(name):
            raise PluginError(f"two plugins are named {name}; " + _how_to_block(name))
        loaded = _import(name, target)
        try:
            plugin = make_plugin(name, loaded, config)
        except ConfigError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {name} failed to start: {type(exc).__name__}: {exc}; "
                + _how_to_block(name)
            ) from None
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:  # a hook's parameters, or twice
            raise PluginError(f"plugin {name}: {exc}") from None
    strangers = sorted(set(config.tables) - {n for n, _ in pm.list_name_plugin()} - blocked)
    if strangers:
        raise ConfigError(
            f"[{strangers[0]}]: no plugin of that name is loaded (loaded: "
            f"{', '.join(n for n, _ in pm.list_name_plugin())})"
        )
    return pm


def plugin_manager(plugins: Iterable[tuple[str, object]]) -> pluggy.PluginManager:
    """A manager holding exactly these ready plugin objects (e.g. fakes, in tests)."""
    pm = new_manager()
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    return pm


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _Impl:
    """One plugin's implementation of one hook, called with the arguments it names."""

    __slots__ = ("plugin", "function", "argnames")

    def __init__(self, impl: pluggy.HookImpl) -> None:
        self.plugin: str = impl.plugin_name
        self.function: Callable[..., Any] = impl.function
        self.argnames: tuple[str, ...] = tuple(impl.argnames)

    def __call__(self, arguments: dict[str, Any]) -> Any:
        return self.function(*[arguments[name] for name in self.argnames])


class Hooks:
    """Checked, named and typed calls of the hooks; plugins are called in registration order.

    Raises (at construction):
        PluginError: see :mod:`supervisor.hookspecs` for what is refused.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        core_commands: Iterable[str] = (),
        core_create_options: Iterable[str] = (),
    ) -> None:
        self.pm = pm
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            unknown = str(exc).split(" in plugin ")[0]  # pluggy names the object, not its name
            raise PluginError(f"plugin {pm.get_name(exc.plugin)}: {unknown}") from None
        self._impls: dict[str, list[_Impl]] = {}
        for name in dir(hookspecs):
            caller = getattr(pm.hook, name, None) if name.startswith("corral_") else None
            if caller is not None:
                self._impls[name] = [_checked(name, impl) for impl in caller.get_hookimpls()]
        launchers = [impl.plugin for impl in self._impls[LAUNCH_HOOK]]
        if len(launchers) != 1:
            found = f"plugins {' and '.join(launchers)} implement it" if launchers else "none does"
            raise PluginError(
                f"exactly one plugin must implement {LAUNCH_HOOK} (the built-in isolation, "
                f"unless blocked and replaced): {found}"
            )
        #: Validators of the ``create`` options plugins claim, by key.
        self.create_options: dict[str, Callable[[Any], Any]] = self._declared(
            "corral_create_options", "create option", core_create_options
        )
        #: Protocol commands the plugins add, by name.
        self.commands: dict[str, Handler] = self._declared(
            "corral_commands", "command", core_commands
        )
        #: Resources of the ``limit`` command, by name.
        self.limit_resources: dict[str, Limit] = self._declared(
            "corral_limit_resources", "limit resource"
        )
        #: Directories the plugins make in every container's directory, with their modes.
        self.spare_directories: dict[str, int] = self._declared(
            "corral_spare_directories", "spare directory"
        )

    def plugin_names(self) -> list[str]:
        """Registered plugin names, in registration order."""
        return [name for name, _ in self.pm.list_name_plugin()]

    def _each(self, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """``(plugin, result)`` of every implementation of *hook* that returns something."""
        for impl in self._impls[hook]:
            result = impl(kwargs)
            if result is not None:
                yield impl.plugin, result

    def _declared(self, hook: str, what: str, core: Iterable[str] = ()) -> dict[str, Any]:
        """The mappings every plugin returns from *hook*, in one; a key claimed twice is refused."""
        owners = dict.fromkeys(core, "the core")
        merged: dict[str, Any] = {}
        for plugin, mapping in self._each(hook):
            for key, value in mapping.items():
                if key in owners:
                    raise PluginError(
                        f"{what} {key!r} is claimed by both {owners[key]} and plugin {plugin}; "
                        + _how_to_block(plugin)
                    )
                owners[key] = f"plugin {plugin}"
                merged[key] = value
        return merged

    async def startup(self, live_handles: frozenset[str], daemon: DaemonView) -> None:
        for impl in self._impls["corral_startup"]:
            try:
                await _resolve(impl({"live_handles": live_handles, "daemon": daemon}))
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin}: start-up failed: {type(exc).__name__}: {exc}"
                ) from exc

    async def shutdown(self) -> None:
        for impl in self._impls["corral_shutdown"]:
            try:
                await _resolve(impl({}))
            except Exception:
                log.exception("plugin shutdown failed", plugin=impl.plugin)

    def prepare(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> Iterator[AbstractAsyncContextManager[None]]:
        """Each prepare context, made only when the core is ready to enter it."""
        for _, context in self._each(
            "corral_container_prepare", container=container, plan=plan, restoring=restoring
        ):
            yield context

    def launch(
        self, container: ContainerView, plan: LaunchPlan, restoring: bool
    ) -> AbstractAsyncContextManager[Sandbox]:
        (impl,) = self._impls[LAUNCH_HOOK]
        context: AbstractAsyncContextManager[Sandbox] = impl(
            {"container": container, "plan": plan, "restoring": restoring}
        )
        return context

    def attach(
        self, container: ContainerView, restoring: bool
    ) -> Iterator[AbstractAsyncContextManager[None]]:
        """Each attach context, made only when the core is ready to enter it."""
        for _, context in self._each(
            "corral_container_attach", container=container, restoring=restoring
        ):
            yield context

    async def info(self, container: ContainerView) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for _, result in self._each("corral_container_info", container=container):
            for key, value in (await _resolve(result)).items():
                if key == "limits" and isinstance(value, dict):
                    merged.setdefault("limits", {}).update(value)  # several plugins own limits
                else:
                    merged[key] = value
        return merged

    async def stats(self, containers: Sequence[ContainerView]) -> dict[str, dict[str, Any]]:
        """Every plugin's figures of *containers*, merged per handle (a later plugin's key wins).

        The plugins' awaitables run concurrently: one plugin's worker-thread job (the
        fs plugin's walks, mostly system calls) goes on while the next reads files on
        the event loop.
        """
        results = [
            result for _, result in self._each("corral_containers_stats", containers=containers)
        ]
        resolved: list[Mapping[str, Mapping[str, Any]]] = [{} for _ in results]

        async def resolve(i: int) -> None:
            resolved[i] = await results[i]

        try:
            async with trio.open_nursery() as nursery:
                for i, result in enumerate(results):
                    if inspect.isawaitable(result):
                        nursery.start_soon(resolve, i)
                    else:
                        resolved[i] = result
        except BaseExceptionGroup as group:  # one plugin failed: its error, as for info
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        merged: dict[str, dict[str, Any]] = {c.handle: {} for c in containers}
        for figures in resolved:  # in registration order
            for handle, tables in figures.items():
                if handle in merged:
                    merged[handle].update(tables)
        return merged

    async def freeze(self, container: ContainerView, frozen: bool) -> bool:
        """Freeze or thaw the container; False when no plugin can."""
        done = False
        for _, result in self._each("corral_container_freeze", container=container, frozen=frozen):
            await _resolve(result)
            done = True
        return done

    def job_group(self, container: ContainerView, job_id: int, create: bool) -> JobGroup | None:
        """The job's own group from the first plugin that gives one, or None."""
        for _, group in self._each(
            "corral_job_group", container=container, job_id=job_id, create=create
        ):
            return group  # type: ignore[no-any-return]
        return None

    async def kill(self, container: ContainerView) -> None:
        for _, result in self._each("corral_container_kill", container=container):
            await _resolve(result)


def _checked(hook: str, impl: pluggy.HookImpl) -> _Impl:
    if impl.tryfirst or impl.trylast or impl.hookwrapper or impl.wrapper:
        raise PluginError(
            f"plugin {impl.plugin_name}: {hook}: tryfirst, trylast and wrappers are not "
            "supported (Corral calls plugins in registration order)"
        )
    return _Impl(impl)
