"""The strict plugin manager: what it refuses at start, and the message it gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from supervisor.api import hookimpl, setting
from supervisor.commands import CORE_COMMANDS
from supervisor.config import Config, PluginsSection
from supervisor.plugins import Hooks, PluginError, load_plugins, plugin_manager
from supervisor.registry import CORE_CREATE_OPTIONS
from supervisor.settings import ConfigError
from tests.core.fakes import FakeLaunch


class Claims:
    """A plugin claiming the names it is given."""

    def __init__(self, **claims: dict[str, Any]) -> None:
        self.claims = claims

    @hookimpl
    def corral_create_options(self) -> dict[str, Any]:
        return self.claims.get("options", {})

    @hookimpl
    def corral_commands(self) -> dict[str, Any]:
        return self.claims.get("commands", {})

    @hookimpl
    def corral_limit_resources(self) -> dict[str, Any]:
        return self.claims.get("limits", {})

    @hookimpl
    def corral_spare_directories(self) -> dict[str, int]:
        return self.claims.get("directories", {})


def hooks(*plugins: tuple[str, object]) -> Hooks:
    return Hooks(plugin_manager(plugins), CORE_COMMANDS, CORE_CREATE_OPTIONS)


def test_a_consistent_set_is_accepted_and_called_in_registration_order() -> None:
    h = hooks(
        ("launch", FakeLaunch([])),
        ("one", Claims(commands={"hello": print}, directories={"x": 0o700})),
        ("two", Claims(options={"colour": str}, limits={"disk": object()})),
    )
    assert h.plugin_names() == ["launch", "one", "two"]
    assert set(h.commands) == {"hello"} and set(h.create_options) == {"colour"}
    assert set(h.limit_resources) == {"disk"} and h.spare_directories == {"x": 0o700}


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (
            {"commands": {"hello": print}},
            "command 'hello' is claimed by both plugin one and plugin two",
        ),
        ({"options": {"x": str}}, "create option 'x' is claimed by both plugin one and plugin two"),
        (
            {"limits": {"mem": 1}},
            "limit resource 'mem' is claimed by both plugin one and plugin two",
        ),
        (
            {"directories": {"d": 1}},
            "spare directory 'd' is claimed by both plugin one and plugin two",
        ),
    ],
)
def test_a_name_claimed_twice_is_refused_naming_both_plugins(
    claims: dict[str, Any], message: str
) -> None:
    with pytest.raises(PluginError, match=message):
        hooks(("launch", FakeLaunch([])), ("one", Claims(**claims)), ("two", Claims(**claims)))


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (
            {"commands": {"create": print}},
            "command 'create' is claimed by both the core and plugin one",
        ),
        (
            {"options": {"handle": str}},
            "create option 'handle' is claimed by both the core and plugin one",
        ),
    ],
)
def test_a_plugin_may_not_take_a_name_of_the_core(claims: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        hooks(("launch", FakeLaunch([])), ("one", Claims(**claims)))


def test_exactly_one_launch_plugin() -> None:
    with pytest.raises(
        PluginError, match="exactly one plugin must implement corral_container_launch.*none does"
    ):
        hooks(("one", Claims()))
    with pytest.raises(PluginError, match="plugins first and second implement it"):
        hooks(("first", FakeLaunch([])), ("second", FakeLaunch([])))


def test_an_unknown_hook_is_refused_naming_the_plugin() -> None:
    class Typo:
        @hookimpl
        def corral_container_prepar(self) -> None:
            pass

    with pytest.raises(PluginError, match="^plugin typo: unknown hook 'corral_container_prepar'$"):
        hooks(("launch", FakeLaunch([])), ("typo", Typo()))


def test_call_order_options_are_refused() -> None:
    class Eager:
        @hookimpl(tryfirst=True)
        def corral_startup(self) -> None:
            pass

    with pytest.raises(
        PluginError, match="plugin eager: corral_startup: tryfirst, trylast and wrappers"
    ):
        hooks(("launch", FakeLaunch([])), ("eager", Eager()))


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """``[tuned]``."""

    level: int = setting(1, "how much")


class Tuned:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


class Plain:
    pass


class Broken:
    def __init__(self) -> None:
        raise OSError(2, "No such file or directory", "/dev/thing")


def load(
    builtins: list[tuple[str, str]], tables: dict[str, Any], block: tuple[str, ...] = ()
) -> Any:
    config = Config(plugins=PluginsSection(block=block), tables=tables)
    return load_plugins(config, builtins, entry_points=False)


HERE = __name__


def test_a_plugin_gets_its_table_parsed_into_its_settings() -> None:
    pm = load([("tuned", f"{HERE}:Tuned")], {"tuned": {"level": 3}})
    assert pm.get_plugin("tuned").settings == Settings(level=3)
    with pytest.raises(ConfigError, match=r"^\[tuned\] level: must be a whole number, got 'high'$"):
        load([("tuned", f"{HERE}:Tuned")], {"tuned": {"level": "high"}})
    with pytest.raises(ConfigError, match=r"^\[tuned\] lvl: unknown setting \(known: level\)$"):
        load([("tuned", f"{HERE}:Tuned")], {"tuned": {"lvl": 3}})


def test_a_table_needs_a_plugin_that_takes_it() -> None:
    with pytest.raises(ConfigError, match=r"^\[plain\]: plugin plain takes no settings$"):
        load([("plain", f"{HERE}:Plain")], {"plain": {"x": 1}})
    with pytest.raises(ConfigError, match=r"^\[other\]: no plugin of that name is loaded"):
        load([("plain", f"{HERE}:Plain")], {"other": {}})
    # The table of a blocked plugin is kept for when it is unblocked.
    assert (
        load(
            [("tuned", f"{HERE}:Tuned")], {"tuned": {"level": 2}}, block=("tuned",)
        ).list_name_plugin()
        == []
    )


def test_a_plugin_that_fails_to_load_is_named_with_the_way_to_block_it() -> None:
    message = (
        r"^plugin gone \(corral_no_such_module:Plugin\) failed to load: ModuleNotFoundError: "
        r"No module named 'corral_no_such_module'; block it with \[plugins\] block = \[\"gone\"\] "
        r"or CORRAL_BLOCK_PLUGINS=gone$"
    )
    with pytest.raises(PluginError, match=message):
        load([("gone", "corral_no_such_module:Plugin")], {})
    assert (
        load([("gone", "corral_no_such_module:Plugin")], {}, block=("gone",)).list_name_plugin()
        == []
    )


def test_a_plugin_that_fails_to_start_is_named_with_the_way_to_block_it() -> None:
    message = (
        r"^plugin broken failed to start: FileNotFoundError: \[Errno 2\] No such file or "
        r"directory: '/dev/thing'; block it with"
    )
    with pytest.raises(PluginError, match=message):
        load([("broken", f"{HERE}:Broken")], {})


class Figures:
    """A plugin giving the figures it is given, one of them awaitable."""

    def __init__(self, figures: dict[str, dict[str, Any]], later: bool = False) -> None:
        self.figures = figures
        self.later = later

    @hookimpl
    def corral_containers_stats(self, containers: list[Any]) -> Any:
        if not self.later:
            return self.figures

        async def figures() -> dict[str, dict[str, Any]]:
            return self.figures

        return figures()


@dataclass
class Named:
    """Enough of a container for the hook: its handle."""

    handle: str


def test_stats_are_merged_per_container_in_registration_order() -> None:
    h = hooks(
        ("launch", FakeLaunch([])),
        ("one", Figures({"a": {"memory_stat": {"usage": 1}, "pids": {"current": 2}}})),
        ("two", Figures({"a": {"pids": {"current": 3}}, "gone": {"pids": {}}}, later=True)),
    )
    asked: list[Any] = [Named("a"), Named("b")]
    merged = trio.run(h.stats, asked)
    # A later plugin's table replaces an earlier one's; a handle not asked about is dropped.
    assert merged == {"a": {"memory_stat": {"usage": 1}, "pids": {"current": 3}}, "b": {}}


class Waits:
    """A plugin whose figures come once *ready* is set, by the plugin after it."""

    def __init__(self, ready: trio.Event, sets: bool) -> None:
        self.ready = ready
        self.sets = sets

    @hookimpl
    def corral_containers_stats(self, containers: list[Any]) -> Any:
        async def figures() -> dict[str, dict[str, Any]]:
            if self.sets:
                self.ready.set()
            else:
                await self.ready.wait()
            return {
                c.handle: {"seen": {"by": "setter" if self.sets else "waiter"}} for c in containers
            }

        return figures()


def test_stats_of_the_plugins_are_read_concurrently_and_merged_in_order() -> None:
    async def main() -> dict[str, dict[str, Any]]:
        ready = trio.Event()
        h = hooks(
            ("launch", FakeLaunch([])),
            ("waiter", Waits(ready, sets=False)),
            ("setter", Waits(ready, sets=True)),
        )
        asked: list[Any] = [Named("a")]
        with trio.fail_after(5):  # one after the other, the first would wait forever
            return await h.stats(asked)

    merged = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert merged == {"a": {"seen": {"by": "setter"}}}  # the later plugin's table wins
