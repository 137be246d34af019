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

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("gitlab_fast.c")
DEFAULT_DEST = Path("/usr/local/bin/corral-gitlab-fast")
CFLAGS = ("-Os", "-static", "-Wall", "-Wextra", "-Werror")


class BuildError(RuntimeError):
    """The compiler failed; the message holds its output."""


def build(dest: Path = DEFAULT_DEST) -> Path:
    """Compile ``gitlab_fast.c`` into *dest* unless it is built from this source already; the
    compiler writes to a temporary name beside *dest*, renamed over it when done.

    Raises:
        BuildError: gcc failed (the message holds its output).
        FileNotFoundError: gcc is not installed.
    """
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    stamp = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        done = subprocess.run(
            ["gcc", *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise BuildError(f"gcc failed ({done.returncode}):\n{done.stderr}")
        tmp.chmod(0o755)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(digest + "\n")
    return dest


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
