"""``corral contain``: run one program in DIR as its root, as a chroot would, with a memory
limit, CPU cores and a network address; the container lives as long as the command
(docs/cli.md)."""

from __future__ import annotations

import argparse
import os

from supervisor.cli.command import Command, Fail, parse_size

TYPE_CHECKING = False  # typing costs a short command 3 ms to import (see wire.py)
if TYPE_CHECKING:
    from typing import Any


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-chroot",
        "--chroot",
        dest="chroot",
        required=True,
        metavar="DIR",
        help="the program's root: writes land in DIR (it must hold bin/)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="keep DIR untouched: writes go to a private layer over it, gone with the container",
    )
    p.add_argument(
        "--memory-limit", metavar="SIZE", help="memory limit (1MB, 64m, 1g; swap counted)"
    )
    p.add_argument("--cpu-core-ids", metavar="LIST", help="CPU cores it may run on (1,3 or 0-1)")
    p.add_argument(
        "--network-address",
        metavar="CIDR",
        help="its address on a shared bridge, e.g. 192.168.2.17/24 (the daemon makes the "
        "bridge of the subnet on first use); without: loopback only",
    )
    p.add_argument("--bridge", metavar="NAME", help="the bridge's name (with --network-address)")
    p.add_argument(
        "--gateway", metavar="ADDR", help="the bridge's address (default: the subnet's first)"
    )
    p.add_argument(
        "--user",
        metavar="USER",
        help="run as USER (a name of DIR's /etc/passwd, a uid, or UID:GID) without "
        "privileges; default: root with the privileged capability set",
    )
    p.add_argument("argv", nargs="+", metavar="-- PROG ARGS", help="the program and its arguments")


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The ``create`` CONFIG of the command line."""
    root = os.path.abspath(args.chroot)
    if not os.path.isdir(root):
        raise Fail(f"contain: -chroot {args.chroot}: no such directory")
    config: dict[str, Any] = {"rootfs": root}
    if not args.overlay:
        config["rootfs_mode"] = "direct"
    limits: dict[str, Any] = {}
    if args.memory_limit is not None:
        limits["mem"] = parse_size(args.memory_limit, "--memory-limit")
    if args.cpu_core_ids is not None:
        limits["cpuset"] = args.cpu_core_ids
    if limits:
        config["limits"] = limits
    config["network"] = network_of(args.network_address, args.bridge, args.gateway, "contain")
    return config


def network_of(address: str | None, bridge: str | None, gateway: str | None, what: str) -> Any:
    """The ``network`` of a create: an address (on a bridge), or none at all."""
    if address is None:
        if bridge or gateway:
            raise Fail(f"{what}: a bridge or gateway needs an address (--network-address)")
        return "none"  # loopback only
    network: dict[str, Any] = {"address": address}
    if bridge:
        network["bridge"] = bridge
    if gateway:
        network["gateway"] = gateway
    return network


def contain(args: argparse.Namespace) -> int:
    from supervisor.cli.oneshot import run_alone

    argv = [a for a in args.argv]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise Fail("contain: no program given (corral contain -chroot DIR -- PROG ARGS...)")
    spawn = {"user": args.user} if args.user else {"privileged": True}
    return run_alone(args, config_of(args), argv, spawn, "contain")


COMMANDS = [
    Command(
        "contain",
        "run one program with DIR as its root (as chroot), limited, on an address; "
        "gone when it ends",
        contain,
        arguments,
    )
]
