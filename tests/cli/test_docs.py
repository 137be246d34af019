"""docs/cli.md lists every command ``corral --help`` knows, with each of its options."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def help_text(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout


def test_every_command_and_option_is_in_docs_cli() -> None:
    listed = help_text().split("positional arguments:")[1].split("options:")[0]
    commands = re.findall(r"^    ([a-z-]+)(?: \(([a-z, -]+)\))?", listed, flags=re.M)
    assert len(commands) > 30
    docs = (REPO / "docs" / "cli.md").read_text()
    headings = set(re.findall(r"^### `corral ([a-z-]+)", docs, flags=re.M))
    names = {name for name, _ in commands}
    assert names == headings, f"docs/cli.md: missing {names - headings}, gone {headings - names}"
    # A section is its heading (which may show the options) and the text to the next one.
    sections = dict(re.findall(r"^### `corral ([a-z-]+)(.*?)(?=^### |\Z)", docs, flags=re.M | re.S))
    for name in names:
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text(name))) - {"--help"}
        missing = {o for o in options if o not in sections[name]}
        assert not missing, f"docs/cli.md: corral {name} does not document {sorted(missing)}"
