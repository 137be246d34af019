"""Build the C front of ``corral`` (``run`` and ``contain`` on their common path, the
Python CLI for the rest) from ``front.c`` beside this module (docs/cli.md).

Static, as the container init and ``corral-gitlab-fast`` (the same builder,
:func:`plugins.isolation.build.build_static`): it starts in about a millisecond
whatever the host's C library, and is rebuilt only when the source changed.

Usage: ``python -m supervisor.cli.build [DEST]`` (default ``/usr/local/bin/corral``).
The front runs the Python CLI ``corral-py`` from its own directory (or
``$CORRAL_PYTHON_CLI``) for what it leaves to it: install both in one directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from plugins.isolation.build import BuildError, build_static

SOURCE = Path(__file__).with_name("front.c")
DEFAULT_DEST = Path("/usr/local/bin/corral")
#: The name of the Python CLI's launcher, beside the front.
PYTHON_CLI = "corral-py"
CFLAGS = ("-Os", "-static", "-Wall", "-Wextra", "-Werror")


def build(dest: Path = DEFAULT_DEST) -> Path:
    """Compile ``front.c`` into *dest* unless it is built from this source already.

    Raises:
        BuildError: gcc failed (the message holds its output).
        FileNotFoundError: gcc is not installed.
    """
    return build_static(SOURCE, dest, CFLAGS)


def main(argv: list[str]) -> int:
    """Build into ``argv[1]`` (or the default path) and print where the binary is."""
    try:
        print(build(Path(argv[1]) if len(argv) > 1 else DEFAULT_DEST))
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
