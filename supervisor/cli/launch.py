"""``corral launch DIR``: run the program that ``DIR/settings`` describes with ``DIR/chroot``
as its root, as the settings-file launcher Corral takes over did (docs/cli.md).

``DIR/settings`` holds ``key=value`` lines:

- the key is what comes before the first ``=``, the value everything after it, both
  without the spaces around them; there is no quoting: ``arg2=id; cat /x`` is the
  argument ``id; cat /x``, quotes included if any;
- blank lines and lines whose first non-blank character is ``#`` are skipped;
- every key at most once; an unknown key, a line without ``=`` or a repeated key is
  refused, naming its line.

Keys: ``process`` (required; the program, absolute or found on PATH), ``arg1`` ..
``argN`` (its arguments, numbered from 1 without gaps), ``user`` and ``group`` (numeric
ids, which need not exist in the chroot's ``/etc/passwd``; ``user`` may also be a name
of it; none: root with the privileged capability set), ``memlimit`` (bytes),
``cpupercent`` (a hard CPU quota in percent of one core, as ``top`` counts: 5 is 5 ms
of CPU time per 100 ms, 250 two and a half cores), ``bridge``, ``ip`` (``A.B.C.D/NN``;
a bare address means /24) and ``gw`` (the bridge's address; default the subnet's
first). Without ``ip`` the program has only loopback.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from supervisor.cli.command import Command, Fail

TYPE_CHECKING = False  # typing costs a short command 3 ms to import (see wire.py)
if TYPE_CHECKING:
    from typing import Any

KEYS = ("user", "group", "memlimit", "cpupercent", "process", "bridge", "ip", "gw")
ARG_KEY = re.compile(r"^arg([1-9][0-9]*)$")
#: Without a prefix length, ``ip`` is an address of a /24.
DEFAULT_PREFIX = 24


def parse_settings(text: str, where: str) -> dict[str, str]:
    """The keys and values of a settings file (see the module docstring).

    Raises:
        Fail: naming the file, the line and what is wrong with it.
    """
    found: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise Fail(f"launch: {where} line {number}: not key=value: {line!r}")
        if key not in KEYS and not ARG_KEY.match(key):
            raise Fail(
                f"launch: {where} line {number}: unknown key {key!r} (known: "
                f"{', '.join(KEYS)}, arg1..argN)"
            )
        if key in found:
            raise Fail(
                f"launch: {where} line {number}: {key} given again (first on line {found[key][1]})"
            )
        found[key] = (value, number)
    return {key: value for key, (value, _) in found.items()}


def _number(settings: dict[str, str], key: str, where: str) -> int | None:
    value = settings.get(key)
    if value is None:
        return None
    if not value.isdigit():
        raise Fail(f"launch: {where}: {key} {value!r} is not a whole number")
    return int(value)


def argv_of(settings: dict[str, str], where: str) -> list[str]:
    process = settings.get("process")
    if not process:
        raise Fail(f"launch: {where}: no process (the program to run)")
    numbers = sorted(int(m.group(1)) for key in settings if (m := ARG_KEY.match(key)))
    if numbers != list(range(1, len(numbers) + 1)):
        missing = next(n for n in range(1, len(numbers) + 2) if n not in numbers)
        raise Fail(f"launch: {where}: arg{missing} is missing (arguments are numbered from 1)")
    return [process, *(settings[f"arg{n}"] for n in numbers)]


def spawn_of(settings: dict[str, str], where: str) -> dict[str, Any]:
    """The job's identity: ``UID:GID`` (or a user name), privileged only as root."""
    user, group = settings.get("user"), _number(settings, "group", where)
    if user is not None and not user.isdigit() and group is not None:
        raise Fail(f"launch: {where}: with group, user must be a numeric id, not {user!r}")
    if user is None and group is None:
        return {"privileged": True}
    uid = user if user is not None else "0"
    spawn: dict[str, Any] = {"user": uid if group is None else f"{uid}:{group}"}
    if uid in ("0", "root"):
        spawn["privileged"] = True
    return spawn


def config_of(settings: dict[str, str], root: Path, overlay: bool, where: str) -> dict[str, Any]:
    from supervisor.cli.contain import network_of

    config: dict[str, Any] = {"rootfs": str(root)}
    if not overlay:
        config["rootfs_mode"] = "direct"
    limits: dict[str, Any] = {}
    memlimit = _number(settings, "memlimit", where)
    if memlimit is not None:
        limits["mem"] = memlimit
    percent = _number(settings, "cpupercent", where)
    if percent is not None:
        if percent == 0:
            raise Fail(f"launch: {where}: cpupercent must be at least 1")
        limits["cpus"] = percent / 100  # a hard quota, in cores (see the module docstring)
    if limits:
        config["limits"] = limits
    ip = settings.get("ip")
    if ip is not None and "/" not in ip:
        ip = f"{ip}/{DEFAULT_PREFIX}"
    config["network"] = network_of(ip, settings.get("bridge"), settings.get("gw"), "launch")
    return config


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a directory holding settings and chroot/")
    p.add_argument(
        "--overlay",
        action="store_true",
        help="keep DIR/chroot untouched: writes go to a private layer, gone with the container",
    )


def launch(args: argparse.Namespace) -> int:
    from supervisor.cli.oneshot import run_alone

    base = Path(os.path.abspath(args.dir))
    where = str(base / "settings")
    try:
        text = (base / "settings").read_text()
    except OSError as exc:
        raise Fail(f"launch: {where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise Fail(f"launch: {where}: not UTF-8 text") from None
    root = base / "chroot"
    if not root.is_dir():
        raise Fail(f"launch: {root}: no such directory (the program's root)")
    settings = parse_settings(text, where)
    argv = argv_of(settings, where)
    config = config_of(settings, root, args.overlay, where)
    return run_alone(args, config, argv, spawn_of(settings, where), "launch")


COMMANDS = [
    Command(
        "launch",
        "run the program DIR/settings describes, with DIR/chroot as its root; gone when it ends",
        launch,
        arguments,
    )
]
