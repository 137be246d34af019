"""Which ``corral`` the CLI tests run: the Python CLI (``python -m supervisor.cli``), or
the C front (supervisor/cli/front.c) that handles ``run`` and ``contain`` on their
common path and runs the Python CLI for the rest.

``CORRAL_TEST_CLI=front`` runs every CLI test through the front built from this
checkout (with this checkout's Python CLI beside it); ``CORRAL_TEST_CLI=/usr/local/bin/corral``
through that one as installed (with the installed ``corral-py``); unset, through Python.
``tests/cli/test_front.py`` runs both for the cases the front takes, whatever it says.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from executors.build import FRONT_PYTHON_CLI, build_front
from tests.conftest import REPO

PYTHON = [sys.executable, "-m", "supervisor.cli"]


@functools.cache
def front() -> str:
    """The front built from this checkout into a directory of its own, with a
    ``corral-py`` beside it that runs this checkout's Python CLI."""
    where = Path(tempfile.mkdtemp(prefix="corral-front-"))
    atexit.register(shutil.rmtree, where, True)
    binary = build_front(where / "corral")
    launcher = where / FRONT_PYTHON_CLI
    launcher.write_text(
        f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from supervisor.cli import finish, main\nfinish(main())\n"
    )
    launcher.chmod(0o755)
    return str(binary)


def cli() -> list[str]:
    """The command line of ``corral`` for the tests (see the module's doc)."""
    chosen = os.environ.get("CORRAL_TEST_CLI", "")
    if chosen == "front":
        return [front()]
    if chosen:
        return [chosen]
    return PYTHON
