"""``corrald``: load the config and plugins, restore the depot, serve the socket.

SIGTERM and SIGINT stop the daemon cleanly: the socket closes, and containers
are detached, not destroyed; the next daemon re-adopts them. Under systemd
(``Type=notify``) it reports ``READY=1`` once the socket listens and ``STOPPING=1``
as it begins to stop (:mod:`supervisor.sdnotify`).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import gc
import os
import resource
import signal
import sys
from pathlib import Path

import structlog
import trio

from supervisor import config as config_module
from supervisor import logs, sdnotify
from supervisor.commands import CORE_COMMANDS
from supervisor.depot import Depot
from supervisor.plugins import Hooks, PluginError, load_plugins
from supervisor.registry import CORE_CREATE_OPTIONS, Supervisor
from supervisor.server import AlreadyServing, Server, open_listener, unwrap

log = structlog.get_logger()

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
#: glibc malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks of this size and more (stream chunks and lines, link outputs) are mmapped,
#: so freeing them returns them to the system at once.
MMAP_THRESHOLD = 64 * 1024
#: Allocations (less frees) between two collections of the youngest generation (Python: 700).
GC_THRESHOLD = 10_000


def become_subreaper() -> None:
    """Adopt the containers' init processes when their launcher exits, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def return_freed_memory() -> None:
    """Give big freed blocks back to the system instead of keeping them in the heap.

    glibc raises its mmap threshold each time an mmapped block is freed (up to
    32 MiB): after the first stream chunks, the rest came from the heap, which a few
    long-lived blocks kept from shrinking once a crowd of stream readers left
    (issue #17, hole 7). A threshold set here stays fixed.
    """
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)


def raise_open_files_limit() -> None:
    """Every container costs the daemon a few fds (init socket, pidfd, OOM eventfd):
    take all the hard limit allows (raising the hard limit needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the request path.

    The modules and plugins loaded at start live as long as the daemon: frozen,
    a full collection no longer scans them (it took about 20 ms here, twice in 65
    cold runs). And the first generation is collected ten times less often: a
    collection costs per object still alive, and the daemon's garbage is freed by
    reference counting, so most collections found nothing.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)


def lock_depot(depot: Depot) -> int:
    """Hold an exclusive lock on the depot for the daemon's life: one daemon per depot."""
    fd = os.open(depot.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyServing(f"another corrald is using the depot {depot.root}") from None
    return fd


async def serve(config: config_module.Config, hooks: Hooks) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    depot = Depot(config.daemon.depot)
    depot.open()
    lock_depot(depot)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        supervisor = Supervisor(config, hooks, depot)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            listener = await open_listener(config.daemon.socket, config.daemon.socket_group)
            server = Server(supervisor, hooks.commands)
            server_scope = trio.CancelScope()

            async def serve_clients() -> None:
                with server_scope:
                    await server.serve(listener)

            nursery.start_soon(serve_clients)
            log.info(
                "corrald ready",
                socket=str(config.daemon.socket),
                containers=len(supervisor.containers),
                plugins=hooks.plugin_names(),
            )
            # The socket listens: a client connecting now is queued and answered as soon
            # as serve_clients runs. So systemd (Type=notify) may start the clients.
            sdnotify.notify("READY=1")
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                break
            sdnotify.notify("STOPPING=1")
            server_scope.cancel()
            await listener.aclose()
            config.daemon.socket.unlink(missing_ok=True)
            await supervisor.detach_all()
            await hooks.shutdown()
            nursery.cancel_scope.cancel()
    log.info("corrald stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="corrald", description="The Corral container supervisor daemon."
    )
    parser.add_argument(
        "-c", "--config", type=Path, help=f"config file (default {config_module.DEFAULT_PATH})"
    )
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"corrald: config: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.daemon.log_level, json=True)
    try:
        hooks = Hooks(load_plugins(config), CORE_COMMANDS, CORE_CREATE_OPTIONS)
        become_subreaper()
        return_freed_memory()
        raise_open_files_limit()
        tune_garbage_collector()
        trio.run(serve, config, hooks)
    except BaseException as exc:
        # Errors from the event loop come wrapped in exception groups.
        error = unwrap(exc)
        if not isinstance(error, config_module.ConfigError | PluginError | AlreadyServing):
            raise
        log.error("corrald cannot start", error=str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
