"""The bench's private corrald: :class:`supervisor.testing.PrivateDaemon` with the bench's config.

The tests use the same helper. The bench adds what only it needs: notes for
RESULTS.md, the plugins the daemon loaded, its container inits (for memory and
nsenter) and a stop that kills any init the daemon left behind.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from bench.host import BASE_ROOTFS, INIT, NET_POOL, NET_PREFIX, NET_TABLE, Proc, processes
from plugins.isolation.build import build_init, is_current, source_digest
from supervisor.client import Client
from supervisor.testing import PrivateDaemon


def _free_loopback_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BenchDaemon(PrivateDaemon):
    """A corrald in the run's work dir, with the run's cgroup parent and its own network."""

    def __init__(self, workdir: Path, prefix: str, output_limit: int) -> None:
        """
        Args:
            workdir: the run's work dir; the daemon's directory is ``corral`` in it.
            prefix: the run's prefix, which the daemon's cgroup parent starts with.
            output_limit: ``[containers] output_limit``, large enough for the stream phase.
        """
        # The installed init only if built from this tree's source (a branch that changes
        # the init measures its own build).
        self.init_binary = (
            INIT if is_current(INIT, source_digest()) else build_init(workdir / "corral-init")
        )
        super().__init__(
            self.init_binary,
            BASE_ROOTFS,
            tables={
                "daemon": {"log_level": "info"},  # the cold-run timeline reads info lines
                "containers": {
                    "grace_time": False,
                    "stop_timeout": 2,
                    "output_limit": output_limit,
                },
                "cgroups": {"parent": f"{prefix}corral"},
                # PrivateDaemon's network is the tests' (small pool, bridge, quarantine 1 s):
                # drop it, and keep the daemon's defaults but for these three.
                "net": None,
            },
            # Every plugin runs: a CORRAL_BLOCK_PLUGINS in the caller's environment would
            # measure a different daemon.
            env={"CORRAL_BLOCK_PLUGINS": ""},
            workdir=workdir / "corral",
        )
        self.configure(
            {"net": {"table": NET_TABLE, "interface_prefix": NET_PREFIX, "pool": NET_POOL}}
        )
        # The metrics endpoint, for the scrapes of the density phase (idle otherwise).
        port = _free_loopback_port()
        self.configure({"metrics": {"listen": f"127.0.0.1:{port}"}})
        #: Where the daemon serves its metrics.
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        #: The daemon's plugins, from its "corrald ready" log line.
        self.plugins: list[str] = []
        #: Lines for RESULTS.md ("Peers and host set-up").
        self.notes: list[str] = []

    def start(self, timeout: float = 30) -> BenchDaemon:
        """Start the daemon and run one container in it, with every plugin.

        Raises:
            RuntimeError: it did not start, or did not run /bin/true.
        """
        try:
            super().start(timeout)
            with self.client() as c:  # one real container proves it works
                handle = c.create()
                status, _, err = c.run(handle, "/bin/true")
                c.destroy(handle)
                if status != 0:
                    raise RuntimeError(f"/bin/true exited {status}: {err}")
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"corrald would not run a container: {type(exc).__name__}: {exc}"
            ) from exc
        ready = self.log_records("corrald ready")
        self.plugins = list(ready[-1].get("plugins", [])) if ready else []
        return self

    def client(self, timeout: float | None = 120) -> Client:
        """A new connection; the density and stream phases wait long for some replies."""
        return super().client(timeout)

    def container_inits(self) -> list[Proc]:
        """The live container inits (PID 1 of each container) of this daemon's depot."""
        depot = str(self.depot).encode()
        return [
            p
            for p in processes()
            if len(p.argv) >= 3
            and p.argv[0] == str(self.init_binary).encode()
            and p.argv[1] == b"launch"
            and p.argv[2].startswith(depot + b"/")
        ]

    def note_log(self) -> None:
        """Notes from the daemon's log: whether the network plugin was live, internal errors."""
        attached = self.log_records("network attached")
        if attached:
            first = attached[0]
            self.notes.append(
                f"network plugin live: {len(attached)} containers got a veth, e.g. device "
                f"{first.get('device')} address {first.get('address')}"
            )
        else:
            self.notes.append("no container got a network device (network plugin not live)")
        errors = self.log_records("request crashed") + self.log_records("container task failed")
        if errors:
            self.notes.append(
                f"{len(errors)} internal errors in the daemon log, first: {errors[0]}"
            )

    def stop(self, timeout: float = 60) -> list[int]:
        """:meth:`PrivateDaemon.stop`, with what went wrong in the notes (idempotent)."""
        left: list[int] = []
        try:
            left = super().stop(timeout)
        except Exception as exc:
            self.notes.append(f"destroy_all failed: {exc}")
        if left:
            self.notes.append(f"killed {len(left)} container init(s) left by corrald")
            time.sleep(0.5)
        return left
