"""Build the static C programs that stand in front of a Python one for its common path:
``corral-gitlab-fast``, the GitLab driver in C (``config``, ``prepare``, ``run``,
``cleanup``), from ``gitlab_fast.c`` beside this module (docs/ci-executors.md); and the
``corral`` front (``run`` and ``contain``), from ``supervisor/cli/front.c`` (docs/cli.md).

Static, as the container init (``plugins/isolation/build.py``), so that they start in
about a millisecond whatever the host's C library; rebuilt only when the source
changed (the source's sha256 is kept in ``DEST.sha256``).

Usage: ``python -m executors.build [DEST]`` (default ``/usr/local/bin/corral-gitlab-fast``),
``python -m executors.build --front [DEST]`` (default ``/usr/local/bin/corral``).
Each runs its Python program from its own directory for what it leaves to it
(``corral-gitlab``, ``corral-py``): install both in one directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import supervisor.cli
from plugins.isolation.build import BuildError, build_static

SOURCE = Path(__file__).with_name("gitlab_fast.c")
DEFAULT_DEST = Path("/usr/local/bin/corral-gitlab-fast")
FRONT_SOURCE = Path(supervisor.cli.__file__).with_name("front.c")
FRONT_DEST = Path("/usr/local/bin/corral")
#: The Python CLI's launcher, which the front runs from its own directory.
FRONT_PYTHON_CLI = "corral-py"
CFLAGS = ("-Os", "-static", "-Wall", "-Wextra", "-Werror")


def build(dest: Path = DEFAULT_DEST) -> Path:
    """Compile ``gitlab_fast.c`` into *dest* unless it is built from this source already
    (the init's builder, :func:`plugins.isolation.build.build_static`).

    Raises:
        BuildError: gcc failed (the message holds its output).
        FileNotFoundError: gcc is not installed.
    """
    return build_static(SOURCE, dest, CFLAGS)


def build_front(dest: Path = FRONT_DEST) -> Path:
    """Compile ``supervisor/cli/front.c`` into *dest*, as :func:`build`."""
    return build_static(FRONT_SOURCE, dest, CFLAGS)


def main(argv: list[str]) -> int:
    """Build into ``argv[1]`` (or the default path; ``--front`` first: the front) and
    print where the binary is."""
    front = argv[1:2] == ["--front"]
    args = argv[2:] if front else argv[1:]
    maker, default = (build_front, FRONT_DEST) if front else (build, DEFAULT_DEST)
    try:
        print(maker(Path(args[0]) if args else default))
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
