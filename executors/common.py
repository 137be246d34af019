"""What both CI drivers share: settings, where a job's image comes from, running a job with its
output streamed, and giving up cleanly when the runner cancels.

A runner starts a driver process per stage, so its start is part of every stage's
cost: the drivers import little (no ``re``, ``dataclasses``, ``argparse`` or ``uuid``,
each several milliseconds; see the ci phase in bench/README.md).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.client import DEFAULT_SOCKET, Client

if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, BinaryIO

#: The longest SCRIPT a ``spawn`` takes (the kernel's limit for one argument).
MAX_INLINE_SCRIPT = 131071
#: Seconds an unreferenced job container lives on: the gaps between a job's stages are
#: seconds, and a runner that died without its clean-up leaks it for no longer than this.
DEFAULT_GRACE_TIME = 900.0
DEFAULT_IMAGES = Path("/var/lib/corral/images")
#: The characters of an image name's components (a registry host, a path part, the tag),
#: which start with a letter or digit.
_IMAGE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class DriverError(Exception):
    """Something the driver could not do; the message names the thing and the reason."""


class Cancelled(Exception):
    """The runner asked the driver to stop (SIGTERM or SIGINT)."""


class Settings:
    """The driver's settings, from ``CORRAL_*`` environment variables (docs/ci-executors.md)."""

    def __init__(
        self,
        socket: Path = Path(DEFAULT_SOCKET),
        images: Path = DEFAULT_IMAGES,
        grace_time: float = DEFAULT_GRACE_TIME,
        limits: dict[str, Any] | None = None,
        disk_size_mb: int | None = None,
    ) -> None:
        self.socket = socket
        #: Where image names are looked up as root filesystem directories first.
        self.images = images
        self.grace_time = grace_time
        #: The create option ``limits`` (``{"mem": BYTES, "cpus": 1.5, "pids": 512}``).
        self.limits = limits or {}
        self.disk_size_mb = disk_size_mb

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Read the settings; a malformed value raises DriverError naming the variable."""
        limits = _json_object(env, "CORRAL_LIMITS")
        return cls(
            socket=Path(env.get("CORRAL_SOCKET") or DEFAULT_SOCKET),
            images=Path(env.get("CORRAL_IMAGES") or DEFAULT_IMAGES),
            grace_time=_number(env, "CORRAL_GRACE_TIME", DEFAULT_GRACE_TIME),
            limits=limits,
            disk_size_mb=int(_number(env, "CORRAL_DISK_SIZE_MB", 0)) or None,
        )

    def connect(self) -> Client:
        """A connection to the daemon, or DriverError saying why there is none."""
        try:
            return Client(self.socket)
        except OSError as exc:
            raise DriverError(
                f"cannot reach corrald at {self.socket}: {exc.strerror or exc}"
            ) from exc

    def create_config(self, handle: str, image: str | None) -> dict[str, Any]:
        """The ``create`` CONFIG of a job's container named *handle*, running *image*."""
        config: dict[str, Any] = {"handle": handle, "grace_time": self.grace_time}
        config.update(image_config(image, self.images))
        if self.limits:
            config["limits"] = self.limits
        if self.disk_size_mb:
            config["disk_size_mb"] = self.disk_size_mb
        return config


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise DriverError(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DriverError(f"{name}: {text!r} is not a number")
    if value < 0:
        raise DriverError(f"{name}: {text!r} is negative")
    return value


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    text = env.get(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DriverError(f"{name}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DriverError(f"{name}: must be a JSON object, got {text!r}")
    return value


def image_config(image: str | None, images: Path) -> dict[str, Any]:
    """Where a job's *image* comes from, as ``create`` CONFIG: nothing for no image (the
    daemon's default root filesystem); ``rootfs`` when :func:`image_directory` has one for
    it; else the image itself, which the daemon's images plugin pulls from its registry
    when its store lacks it (a name it cannot pull is refused by the daemon, naming it)."""
    if not image:
        return {}
    rootfs = image_directory(image, images)
    if rootfs is not None:
        return {"rootfs": str(rootfs)}
    return {"image": image, "image_pull": "missing"}


def image_directory(image: str, images: Path) -> Path | None:
    """The root filesystem directory ``IMAGES/NAME/TAG`` of *image* if there is one, the
    tag ``latest`` when none is given (``debian:12`` -> ``IMAGES/debian/12``,
    ``ghcr.io/team/app`` -> ``IMAGES/ghcr.io/team/app/latest``): an image unpacked there
    by hand runs with no registry. None for a name that is no plain ``NAME[:TAG]`` (a
    digest, a registry port), which only a registry can give."""
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    parts = [*name.split("/"), tag or "latest"]
    if not all(p[:1].isalnum() and _IMAGE_CHARS.issuperset(p) for p in parts):
        return None
    rootfs = images.joinpath(*parts)
    return rootfs if (rootfs / "bin").is_dir() else None


@contextmanager
def cancellable() -> Iterator[None]:
    """Turn SIGTERM and SIGINT (a runner's cancel or timeout) into :class:`Cancelled`, once:
    a second signal while the driver cleans up is ignored (the runner kills it at its
    deadline anyway)."""

    def cancel(signum: int, frame: FrameType | None) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        raise Cancelled(signal.Signals(signum).name)

    previous = {s: signal.signal(s, cancel) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def kill_processes(settings: Settings, handle: str) -> None:
    """Kill every process of the container but its init (``kill -1`` as root skips init and
    itself), on a connection of its own: the one streaming the job may be mid-reply.
    The container stays, for the runner's later stages and its clean-up."""
    with settings.connect() as client:
        client.run(handle, "kill -KILL -1", privileged=True, discard_output=True)


def run_streamed(
    client: Client,
    handle: str,
    script: str,
    out: BinaryIO | None = None,
    err: BinaryIO | None = None,
    **opts: Any,
) -> int | None:
    """Run *script* in the container, copying its output to *out* and *err* (by default
    this process's) as it comes; its exit status (None when the container went away
    under it)."""
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    job = client.spawn(handle, script, **opts)
    for name, chunk in client.stream(handle, job):
        target = out if name == "stdout" else err
        # Bytes that are not UTF-8 arrive as lone surrogates: written back as they were.
        target.write(chunk.encode("utf-8", "surrogateescape"))
        target.flush()
    # The status comes with the output once more: link has no option to leave it out.
    status, _, _ = client.link(handle, job)
    return status


def quote(word: str) -> str:
    """*word* as one word of a POSIX shell line (``shlex.quote``'s rule, without importing
    ``shlex`` and ``re`` into every stage)."""
    return "'" + word.replace("'", "'\"'\"'") + "'"


def fail(program: str, message: str) -> None:
    """Print a driver's error as the runner shows it in the job log: one line on stderr."""
    print(f"{program}: {message}", file=sys.stderr, flush=True)
