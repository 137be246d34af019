"""Build ``corral-init``, the container init, from ``corral_init.c`` beside this module.

The binary is static (it runs as PID 1 of containers whose root filesystem has
no C library of ours) and is rebuilt only when the source changed: the sha256 of
the source it was built from is kept next to it in ``DEST.sha256``.

Usage: ``python -m plugins.isolation.build [DEST]`` (default
``/usr/local/lib/corral/corral-init``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Sequence

SOURCE = pathlib.Path(__file__).with_name("corral_init.c")
DEFAULT_DEST = pathlib.Path("/usr/local/lib/corral/corral-init")
CFLAGS = ("-Os", "-static", "-Wall", "-Wextra")


class BuildError(RuntimeError):
    """The compiler failed; the message holds its output."""


def source_digest(source: pathlib.Path = SOURCE) -> str:
    """Return the hex sha256 of the init's C source."""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def is_current(dest: pathlib.Path, digest: str) -> bool:
    """Whether *dest* exists and was built from the source whose sha256 is *digest*."""
    stamp = dest.with_suffix(".sha256")
    try:
        return dest.is_file() and stamp.read_text().strip() == digest
    except FileNotFoundError:
        return False


def _write_atomically(path: pathlib.Path, text: str) -> None:
    """Write *text* to *path* through a temporary file renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def build_static(
    source: pathlib.Path, dest: pathlib.Path, cflags: Sequence[str] = CFLAGS
) -> pathlib.Path:
    """Compile the C program *source* into the static binary *dest* unless it is already
    built from this source (its sha256 is kept in ``DEST.sha256``).

    The compiler writes to a temporary name in *dest*'s directory, which is then
    renamed over *dest*, so a half-written binary is never run.

    Returns:
        *dest*.

    Raises:
        BuildError: gcc failed (the message holds its output).
        FileNotFoundError: gcc is not installed.
    """
    dest = pathlib.Path(dest)
    digest = source_digest(source)
    if is_current(dest, digest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        result = subprocess.run(
            ["gcc", *cflags, "-o", str(tmp), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"gcc failed ({result.returncode}):\n{result.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _write_atomically(dest.with_suffix(".sha256"), digest + "\n")
    return dest


def build_init(dest: pathlib.Path) -> pathlib.Path:
    """Compile ``corral_init.c`` into *dest* unless it is already built from this source
    (see :func:`build_static`)."""
    return build_static(SOURCE, dest)


def main(argv: list[str]) -> int:
    """Build into ``argv[1]`` (or the default path) and print where the binary is."""
    dest = pathlib.Path(argv[1]) if len(argv) > 1 else DEFAULT_DEST
    try:
        print(build_init(dest))
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
