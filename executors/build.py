"""Build ``corral-gitlab-fast``, the GitLab driver in C (``config``, ``prepare``, ``run``,
``cleanup``), from ``gitlab_fast.c`` beside this module (docs/ci-executors.md).

Static, as the container init (``plugins/isolation/build.py``), so that it starts in
about a millisecond whatever the host's C library; rebuilt only when the source
changed (the source's sha256 is kept in ``DEST.sha256``).

Usage: ``python -m executors.build [DEST]`` (default ``/usr/local/bin/corral-gitlab-fast``).
The program runs the Python driver ``corral-gitlab`` from its own directory for what it
leaves to it: install both in one directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from plugins.isolation.build import BuildError, build_static

SOURCE = Path(__file__).with_name("gitlab_fast.c")
DEFAULT_DEST = Path("/usr/local/bin/corral-gitlab-fast")
CFLAGS = ("-Os", "-static", "-Wall", "-Wextra", "-Werror")


def build(dest: Path = DEFAULT_DEST) -> Path:
    """Compile ``gitlab_fast.c`` into *dest* unless it is built from this source already
    (the init's builder, :func:`plugins.isolation.build.build_static`).

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
