"""One program in a container made for it alone, as if run here: what ``corral contain``
and ``corral launch`` share.

The container is created with ``grace_time`` 0, so the daemon destroys it as soon as
the last of our connections closes: when we exit, however we exit (SIGKILL too).
The program's exit status is ours; INT, TERM, HUP, QUIT, USR1 and USR2 sent to us go
to its process group; our stdin is streamed to it (EOF passed on), its output written
to our stdout and stderr as it comes. When our stdin and stdout are terminals it gets
a terminal of its own (ours in raw mode meanwhile, its size following our window).

Threads, each with a connection of its own, so none waits for another: the main one
streams the output then links the job; one forwards signals (``sigwait``: the
signals are blocked everywhere else, so no handler ever interrupts a request
half-sent); one copies stdin.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from supervisor.cli.command import Fail, exit_status, write_out

TYPE_CHECKING = False  # typing costs a short command 3 ms to import (see wire.py)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from supervisor.client import Client, JobProcess

#: Signals passed on to the program (SIGWINCH resizes its terminal instead).
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
STDIN_CHUNK = 65536


def run_alone(
    args: argparse.Namespace,
    config: dict[str, Any],
    argv: list[str],
    spawn: dict[str, Any],
    what: str,
) -> int:
    """Create a container of *config*, run *argv* in it with the spawn options *spawn*,
    pass our stdio and signals through; return its exit status (the container goes
    with our connections)."""
    from supervisor import errors
    from supervisor.cli.command import connect

    config = {**config, "grace_time": 0}
    # Blocked before any thread starts, so every thread inherits the mask: only the
    # forwarding thread takes them.
    watched = {*FORWARDED, signal.SIGWINCH}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        with connect(args) as client:
            try:
                handle = client.create(config)
            except errors.CorralError as exc:
                raise Fail(f"{what}: {exc}") from None
            try:
                return _run_in(
                    args, client, handle, argv, spawn, what, watched, config.get("limits")
                )
            finally:
                try:
                    client.destroy(handle)
                except Exception:
                    pass  # gone already; grace 0 reaps it when we close anyway
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)


def _run_in(
    args: argparse.Namespace,
    client: Client,
    handle: str,
    argv: list[str],
    spawn: dict[str, Any],
    what: str,
    watched: set[signal.Signals],
    config_limits: dict[str, Any] | None,
) -> int:
    from supervisor import errors

    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    opts: dict[str, Any] = {**spawn, "argv": argv}
    # Our stdin, unless it is /dev/null (or closed): the job's is /dev/null then too.
    feed = terminal or not _null_stdin()
    if terminal:
        size = os.get_terminal_size(sys.stdout.fileno())
        opts["tty"] = {"rows": max(size.lines, 1), "cols": max(size.columns, 1)}
    elif feed:
        opts["stdin"] = True
    try:
        job = client.popen(handle, "", **opts)
    except errors.CorralError as exc:
        raise Fail(f"{what}: {argv[0]}: {exc}") from None
    saved = _raw(sys.stdin.fileno()) if terminal else None
    try:
        _daemon_thread(_forward_signals, args, job, watched)
        if feed:
            _daemon_thread(_copy_stdin, args, job)
        for name, chunk in job.output():
            write_out(name, chunk)
        status = job.wait()
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
    if _out_of_memory(client, handle, job.ended or {}, status):
        mem = (config_limits or {}).get("mem")
        limit = f" of {mem} bytes" if mem else ""
        print(
            f"corral: {what}: {argv[0]} was killed: it exceeded the memory limit{limit}",
            file=sys.stderr,
        )
        return 137
    return exit_status(status)


def _out_of_memory(client: Client, handle: str, ended: dict[str, Any], status: int | None) -> bool:
    """Whether the job died of the container's memory limit. ``killed_by`` says so once
    the daemon has seen the OOM event, which may come just after the job's end: a
    SIGKILL is then told by the kernel's count of OOM kills in the container."""
    from supervisor import errors

    if ended.get("killed_by") == "oom":
        return True
    if ended.get("signal") != 9 and status != 137:
        return False
    try:
        stat = client.info(handle).get("memory_stat") or {}
    except errors.CorralError:
        return False
    return bool(stat.get("oom_count"))


def _null_stdin() -> bool:
    """Whether our stdin is /dev/null or closed: nothing to pass on."""
    try:
        ours, null = os.fstat(0), os.stat(os.devnull)
    except OSError:
        return True
    return (ours.st_rdev, ours.st_ino, ours.st_dev) == (null.st_rdev, null.st_ino, null.st_dev)


def _daemon_thread(target: Any, *targs: Any) -> None:
    threading.Thread(target=target, args=targs, daemon=True).start()


def _client(args: argparse.Namespace) -> Client:
    from supervisor.cli.command import connect

    return connect(args)


def _forward_signals(args: argparse.Namespace, job: JobProcess, watched: set[int]) -> None:
    """Pass each signal we get to the job (SIGWINCH: our window's size to its terminal)."""
    from supervisor import errors

    number = signal.sigwait(watched)  # connected at the first: most runs get none
    with _client(args) as client:
        while True:
            try:
                if number == signal.SIGWINCH:
                    if sys.stdout.isatty():
                        size = os.get_terminal_size(sys.stdout.fileno())
                        client.call("resize", job.handle, job.id, size.lines, size.columns)
                else:
                    client.signal(job.handle, job.id, int(number))
            except errors.CorralError:
                pass  # the job has ended: its status comes with the output's end
            number = signal.sigwait(watched)


def _copy_stdin(args: argparse.Namespace, job: JobProcess) -> None:
    """Our stdin to the job's, then EOF (on a terminal: what we type, ^D included)."""
    from supervisor import errors
    from supervisor.client import JobProcess

    fd = sys.stdin.fileno()
    with _client(args) as client:
        writer = JobProcess(client, job.handle, job.id)
        try:
            while data := os.read(fd, STDIN_CHUNK):
                writer.write(data)
            if not os.isatty(fd):
                writer.close_stdin()
        except (errors.CorralError, OSError):
            pass  # the job stopped reading, or ended


def _raw(fd: int) -> list[Any]:
    """Put our terminal in raw mode (the job's terminal does the editing); the old mode."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    return saved
