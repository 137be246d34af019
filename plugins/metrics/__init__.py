"""Metrics plugin: the daemon and its containers as Prometheus metrics.

Off by default. ``[metrics] listen = "127.0.0.1:PORT"`` serves ``GET /metrics``
over HTTP on a loopback address (:mod:`.http`); ``[metrics] textfile =
"/PATH/corral.prom"`` has the daemon rewrite that file every
``textfile_interval`` seconds for node_exporter's textfile collector. Both
may be on. See README.md here for the metrics.

Everything is read when asked (:mod:`.collect`): a scrape reads every live
container's figures (``DaemonView.stats``: the counters and gauges of
``info``, each plugin reading all the containers at once) and the request
counters of the core, through the :class:`~supervisor.api.DaemonView` given to
``corral_startup``, and renders them as ``prometheus_client`` would. Scrapes
that overlap share one reading. This plugin keeps nothing between scrapes.

Modules: :mod:`.settings` (the ``[metrics]`` table), :mod:`.collect` (the
reading and the metric families), :mod:`.http` (the server).
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from plugins.metrics import http
from plugins.metrics.collect import CONTENT_TYPE, exposition, process_collector, take
from plugins.metrics.settings import NAME, Settings
from supervisor.api import ConfigError, DaemonView, hookimpl

log = structlog.get_logger().bind(plugin=NAME)


@dataclass
class _Reading:
    """One page being made; scrapes that come meanwhile wait for it."""

    done: trio.Event = field(default_factory=trio.Event)
    body: bytes | None = None


class MetricsPlugin:
    """The built-in ``metrics`` plugin (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon: DaemonView | None = None
        self.process = process_collector()
        self._reading: _Reading | None = None
        self._textfile_written = False
        if settings.textfile is not None:
            _check_directory(settings.textfile)
        #: Bound now, so that an address in use stops the daemon before it serves.
        self.listener: socket.socket | None = None
        if settings.listen is not None:
            try:
                self.listener = http.bind(settings.listen)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    why += " (another program, or another corrald, listens there)"
                raise ConfigError(
                    f"[{NAME}] listen: cannot serve the metrics on {settings.listen}: {why}"
                ) from None

    @hookimpl
    def corral_startup(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        if self.listener is not None:
            daemon.start_soon(http.serve, self.listener, self.page, CONTENT_TYPE)
            self.listener = None  # the server closes it
            log.info("metrics served", url=f"http://{self.settings.listen}{http.PATH}")
        if self.settings.textfile is not None:
            daemon.start_soon(self._write_textfile, self.settings.textfile)

    @hookimpl
    def corral_shutdown(self) -> None:
        # A file left behind would show a stopped daemon's last figures as current.
        path = self.settings.textfile
        if path is not None and self._textfile_written:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("metrics textfile not removed", path=str(path), error=str(exc))

    async def page(self) -> bytes:
        """The metrics now, in the Prometheus text format.

        Scrapes that come while one is being read get that one: however many
        scrapers there are, the daemon reads its containers once at a time.
        """
        while True:
            reading = self._reading
            if reading is None:
                reading = self._reading = _Reading()
                try:
                    reading.body = await self._read()
                finally:
                    self._reading = None
                    reading.done.set()
                return reading.body
            await reading.done.wait()
            if reading.body is not None:  # else its scrape was cancelled: read anew
                return reading.body

    async def _read(self) -> bytes:
        assert self.daemon is not None
        snapshot = await take(self.daemon)
        # Rendering is pure Python over plain values: in a worker thread, the event loop
        # keeps serving requests meanwhile (the GIL is handed over every few ms).
        return await trio.to_thread.run_sync(exposition, snapshot, [self.process])

    async def _write_textfile(self, path: Path) -> None:
        """Rewrite *path* every ``textfile_interval`` seconds for as long as the daemon runs."""
        failing = False
        while True:
            try:
                body = await self.page()
                await trio.to_thread.run_sync(write_atomically, path, body)
                self._textfile_written = True
                if failing:
                    log.info("metrics textfile written again", path=str(path))
                failing = False
            except OSError as exc:
                if not failing:  # once per failing spell, not at every interval
                    log.warning("metrics textfile not written", path=str(path), error=str(exc))
                failing = True
            await trio.sleep(self.settings.textfile_interval)


def _check_directory(path: Path) -> None:
    """Refuse a textfile the daemon could not write: its directory must be there, writable."""
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(f"[{NAME}] textfile: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"[{NAME}] textfile: the daemon cannot write in {directory}")


def write_atomically(path: Path, body: bytes) -> None:
    """Replace *path* by a file holding *body*, in one rename: a reader (node_exporter)
    sees the old file or the new one, never half of one.

    The file is first written next to it under a name the textfile collector
    ignores (it reads ``*.prom`` only), world-readable, as node_exporter
    seldom runs as root.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
