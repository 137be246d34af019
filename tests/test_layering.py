"""The layering rule, read from the code's imports: plugins reach the core only through
``supervisor.api``, and the core imports no plugin."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

#: The one core module plugins may import.
PUBLIC_API = "supervisor.api"


def imports(path: Path, package: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import in the file, also those inside functions and
    ``if TYPE_CHECKING:`` blocks; a relative import is resolved against *package* (by
    default the file's own in the repository)."""
    if package is None:
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module
            # ``from supervisor import errors`` imports the module supervisor.errors.
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def offenders(folder: str, forbidden: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """Imports under *folder* of *forbidden* or its submodules, but for the *allowed* ones."""
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for line, module in imports(path):
            inside = module == forbidden or module.startswith(forbidden + ".")
            if inside and not any(module == a or module.startswith(a + ".") for a in allowed):
                found.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return found


#: What a plugin's ``corral`` commands build on (docs/cli.md, "Adding commands from a plugin").
CLI_API = "supervisor.cli.command"


def test_plugins_import_only_the_public_api_of_the_core() -> None:
    assert offenders("plugins", "supervisor", allowed=(PUBLIC_API, CLI_API)) == []


def test_the_core_imports_no_plugin() -> None:
    assert offenders("supervisor", "plugins") == []


def test_the_example_plugin_imports_only_the_public_api() -> None:
    assert offenders("tests/plugins", "supervisor", allowed=(PUBLIC_API,)) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from supervisor.container import Container", "supervisor.container"),
        ("from supervisor import errors", "supervisor.errors"),
        ("import supervisor.protocol as p", "supervisor.protocol"),
        (
            "if TYPE_CHECKING:\n    from supervisor.registry import Supervisor",
            "supervisor.registry",
        ),
        ("def f():\n    from supervisor.depot import Depot", "supervisor.depot"),
        ("from ..supervisor_shim import x", "plugins.supervisor_shim"),
    ],
)
def test_every_kind_of_import_is_seen(tmp_path: Path, source: str, expected: str) -> None:
    """The walk finds imports however they are written (else the rules above pass vacuously)."""
    path = tmp_path / "probe.py"
    path.write_text(source + "\n")
    assert expected in {module for _, module in imports(path, package="plugins.net")}
