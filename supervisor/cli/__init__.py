"""``corral``: the command-line client (docs/cli.md).

Human output on stdout; a user's mistake is one line ``corral: MESSAGE`` on stderr
and exit status 1, never a traceback. Commands that run a job exit with its status.

Start-up is most of a short command's cost, so nothing is imported before the
command is known: :data:`BUILTIN` says which module defines it, and only that module
is imported (plugins' commands are found through the ``corral.cli`` entry points,
read only for a command that is not built in). A command without arguments runs
without building a parser at all.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from supervisor.cli.command import Command, Fail

TYPE_CHECKING = False  # typing costs a short command 5 ms: see supervisor/wire.py
if TYPE_CHECKING:
    import argparse
    from typing import NoReturn

#: Every built-in command (and alias) and the module that defines it.
BUILTIN: dict[str, str] = {
    **dict.fromkeys(
        (
            "ping",
            "spawn",
            "link",
            "stream",
            "signal",
            "destroy",
            "info",
            "list",
            "start",
            "events",
            "raw",
        ),
        "supervisor.cli.protocol",
    ),
    **dict.fromkeys(("run", "create", "exec"), "supervisor.cli.run"),
    **dict.fromkeys(
        (
            "ps",
            "ls",
            "top",
            "logs",
            "inspect",
            "stats",
            "cp",
            "limit",
            "port",
            "net",
            "stop",
            "kill",
            "rm",
            "pause",
            "unpause",
            "resume",
        ),
        "supervisor.cli.manage",
    ),
    "contain": "supervisor.cli.contain",
    "launch": "supervisor.cli.launch",
}

#: The entry-point group where a plugin names, per command, the module that defines it.
PLUGIN_GROUP = "corral.cli"


def plugin_commands() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}


def _commands_of(module_name: str) -> list[Command]:
    from importlib import import_module

    return list(import_module(module_name).COMMANDS)


def _all_commands() -> list[Command]:
    modules = dict.fromkeys([*BUILTIN.values(), *plugin_commands().values()])
    commands = [c for module in modules for c in _commands_of(module)]
    return sorted(commands, key=lambda c: c.name)


def _find(name: str) -> Command | None:
    module = BUILTIN.get(name) or plugin_commands().get(name)
    if module is None:
        return None
    return next((c for c in _commands_of(module) if name in (c.name, *c.aliases)), None)


def parser(commands: list[Command]) -> argparse.ArgumentParser:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            # One line, as every other mistake (argparse would print the usage first).
            raise Fail(f"{message} (`{self.prog} --help` tells more)", status=2)

    def formatter(prog: str) -> argparse.HelpFormatter:
        # argparse makes formatters as it builds the parser and asks shutil for the width
        # (an import of 2 ms on every command); the terminal's width is os's to tell.
        try:
            width = os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError):
            width = 80
        return argparse.HelpFormatter(prog, width=max(width - 2, 20))

    p = Parser(
        prog="corral",
        formatter_class=formatter,
        description="Run and manage containers of the Corral daemon.",
        epilog="`corral COMMAND --help` tells more; docs/cli.md lists every command.",
    )
    p.add_argument(
        "-s",
        "--socket",
        help="the daemon's socket (default $CORRAL_SOCKET or /run/corral/corral.sock)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        s = sub.add_parser(
            command.name,
            aliases=list(command.aliases),
            help=command.help,
            description=command.help,
            formatter_class=formatter,
        )
        if command.arguments is not None:
            command.arguments(s)
        s.set_defaults(run=command.run)
    return p


def _split(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(socket, command, the rest): the global options come before the command."""
    socket = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-s", "--socket") and i + 1 < len(argv):
            socket, i = argv[i + 1], i + 2
        elif arg.startswith("--socket="):
            socket, i = arg.partition("=")[2], i + 1
        elif arg.startswith("-"):
            return socket, None, argv[i:]  # --help, or a mistake argparse will name
        else:
            return socket, arg, argv[i + 1 :]
    return socket, None, []


def _run(argv: list[str]) -> int:
    socket, name, rest = _split(argv)
    command = _find(name) if name else None
    if command is not None and command.arguments is None and not rest:
        return command.run(SimpleNamespace(socket=socket, command=name))  # type: ignore[arg-type]
    args = parser([command] if command else _all_commands()).parse_args(argv)
    return int(args.run(args))


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except Fail as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Our reader went away (`corral ps | head -1`): say nothing, as a killed `ls` would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        from supervisor import errors
        from supervisor.client import ConnectionClosed

        if isinstance(exc, errors.CorralError):
            hint = HINTS.get(exc.code, "")
            print(f"corral: {exc.code}: {exc}{hint}", file=sys.stderr)
            return 1
        if isinstance(exc, ConnectionClosed | ConnectionError):
            print("corral: the daemon closed the connection (did it stop?)", file=sys.stderr)
            return 1
        raise


def finish(status: int) -> NoReturn:
    """Exit with *status* once our output is written, skipping the interpreter's
    finalization: tearing down the modules a command imported (argparse, re, enum...)
    costs a short command about 5 ms, for nothing (the launchers call this after
    :func:`main`; a test calling :func:`main` itself keeps its interpreter)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = 141  # as main does when the reader went away mid-command
    except OSError:
        status = status or 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(status)


#: What to do about an error reply, after its message.
HINTS = {
    "unknown_handle": " (`corral ps -a` lists the containers)",
    "unknown_job": " (it was never started, or its result was taken by link)",
    "internal": " (a bug of Corral: its log, /var/log/corral/corrald.log, tells more)",
}
