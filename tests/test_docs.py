"""The docs cannot drift from the code: every setting, hook, command and error code is
documented where a user or a plugin author looks for it, and nothing documented is gone."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import errors, hookspecs
from supervisor.commands import CORE_COMMANDS
from supervisor.config import CORE_TABLES, load
from supervisor.plugins import BUILTIN_PLUGINS, Hooks, load_plugins, settings_class
from supervisor.registry import CORE_CREATE_OPTIONS
from supervisor.settings import declared, parse_table
from supervisor.testing import PrivateDaemon
from tests.conftest import REPO

DOCS = REPO / "docs"


def declared_tables() -> dict[str, type]:
    """Every config table the code declares: the core's and the built-in plugins'."""
    tables = dict(CORE_TABLES)
    for name, target in BUILTIN_PLUGINS:
        module, _, attribute = target.partition(":")
        table = settings_class(getattr(importlib.import_module(module), attribute))
        if table is not None:
            tables[name] = table
    return tables


def sections(text: str, heading: str, boundary: str = "## ") -> dict[str, str]:
    """The text under each line of the form *heading* (a regex with one group: the name),
    up to the next line starting with *boundary* (by default, the next Markdown section)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = re.fullmatch(heading, line)
        if match:
            current = found.setdefault(match.group(1), [])
        elif line.startswith(boundary):
            current = None
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def row_keys(text: str) -> set[str]:
    """The first cell of every table row, when it is `code`: ``| `key` | ...``."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.M))


# -- settings ---------------------------------------------------------------------------


def test_every_setting_is_in_the_config_docs_and_every_row_is_a_setting() -> None:
    documented = sections((DOCS / "config.md").read_text(), r"## `\[(\w+)\]`.*")
    for name, table in declared_tables().items():
        keys = {d.key for d in declared(table)}
        assert name in documented, f"docs/config.md has no section for [{name}]"
        assert row_keys(documented[name]) == keys, f"[{name}] in docs/config.md"
    assert set(documented) <= set(declared_tables()), "docs/config.md documents a table of nothing"


def test_the_example_config_shows_every_setting_with_its_default() -> None:
    text = (REPO / "etc" / "corral.toml").read_text()
    data = tomllib.loads(text)
    commented = sections(text, r"\[(\w+)\]", boundary="[")
    for name, table in declared_tables().items():
        values = data.get(name, {})
        assert parse_table(table, values, name) == table(), f"[{name}] differs from the defaults"
        for setting in declared(table):
            if setting.key not in values:  # a setting with no value in TOML (none) is a comment
                assert re.search(rf"^# {setting.key} = ", commented[name], flags=re.M), (
                    f"etc/corral.toml does not show [{name}] {setting.key}"
                )
    assert set(data) <= set(declared_tables())


def test_every_setting_has_a_line_of_documentation() -> None:
    for name, table in declared_tables().items():
        for setting in declared(table):
            assert setting.doc, f"[{name}] {setting.key} has no doc"


# -- hooks ----------------------------------------------------------------------------------


def hookspecs_() -> Iterator[tuple[str, object]]:
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("corral_"):
            yield name, function


def test_every_hook_states_its_contract() -> None:
    hooks = list(hookspecs_())
    assert len(hooks) >= 10
    for name, hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert "Called" in doc, f"{name}: who is called, and when?"
        assert "exception" in doc or "refuses" in doc, f"{name}: what does an error do?"
        for param in inspect.signature(hook).parameters:  # type: ignore[arg-type]
            assert f":param {param}:" in doc, f"{name} does not document {param}"


def test_every_hook_is_in_the_plugin_docs_and_every_row_is_a_hook() -> None:
    documented = row_keys((DOCS / "plugins.md").read_text())
    assert {name for name, _ in hookspecs_()} == {h for h in documented if h.startswith("corral_")}


# -- protocol -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    """The built-in plugins as a daemon loads them, with a private daemon's settings (its
    own nftables table and device prefix): nothing is started."""
    private = PrivateDaemon(Path("/bin/true"), Path("/"))
    try:
        yield Hooks(load_plugins(load(private.config)), CORE_COMMANDS, CORE_CREATE_OPTIONS)
    finally:
        private.close()


def test_every_command_is_in_the_protocol_docs_and_every_row_is_a_command(hooks: Hooks) -> None:
    text = (DOCS / "protocol.md").read_text()
    commands = sections(text, r"## (Commands)")["Commands"]
    documented = set(re.findall(r'^\| `\["([a-z-]+)"', commands, flags=re.M))
    assert documented == set(CORE_COMMANDS) | set(hooks.commands)


def test_every_error_code_is_in_the_protocol_docs() -> None:
    codes = {"internal"} | {
        cls.code
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.CorralError)
    }
    text = sections((DOCS / "protocol.md").read_text(), r"## (Errors)")["Errors"]
    assert row_keys(text) == codes
