"""A private ``corrald`` for the tests and the benchmark.

:class:`PrivateDaemon` runs the daemon of this checkout as a subprocess with a
directory of its own (config, socket, depot, log) and, so that it never meets
another daemon's, its own cgroup parent, nftables table, device prefix, address
pool, bridge subnet and port range. Its tables start from those values and can
be changed before :meth:`PrivateDaemon.start` (:meth:`PrivateDaemon.configure`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from supervisor.client import Client

REPO = Path(__file__).resolve().parent.parent
INSTALLED_INIT = Path("/usr/local/lib/corral/corral-init")
INSTALLED_ROOTFS = Path("/var/lib/corral/rootfs/base")

Tables = dict[str, dict[str, Any]]
#: Tables to change: ``None`` drops a table.
TableChanges = Mapping[str, Mapping[str, Any] | None]


def _unique_network(name: str) -> dict[str, Any]:
    """``[net]`` values of a daemon named *name* alone: a daemon's (practically) never shares
    a table, device prefix, subnet or port with another's, nor with a system daemon's
    (10.254.0.0/22, "crl", 61001-65000). A CRC, not ``hash()``: the same in every process."""
    h = zlib.crc32(name.encode())
    ports = 20000 + h // 2**25 % 127 * 100
    return {
        "table": f"corral_test_{name[4:]}",
        "interface_prefix": f"t{name[-5:]}",
        "pool": f"10.{128 + h % 8192 // 64}.{h % 64 * 4}.0/22",
        "bridges": {"lan": f"10.{64 + h // 8192 % 16384 // 256}.{h // 8192 % 256}.0/24"},
        "port_range": [ports, ports + 99],
        "quarantine": 1,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        # Keys quoted: a registry's "127.0.0.1:5000" is no bare key.
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise TypeError(f"no TOML for {value!r}")


def render_toml(tables: Tables) -> str:
    """The config file holding *tables* (values: strings, numbers, booleans, lists, tables)."""
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
        for name, table in tables.items()
    )


class PrivateDaemon:
    """A ``corrald`` subprocess with its own config, socket, depot, log and host resources."""

    def __init__(
        self,
        init: Path,
        rootfs: Path,
        tables: TableChanges | None = None,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        """
        Args:
            init: the ``corral-init`` binary.
            rootfs: the base root filesystem.
            tables: config values over the private defaults, table by table.
            env: environment variables over this process's (``CORRAL_BLOCK_PLUGINS``...).
            workdir: the daemon's directory (default: a new short one in /tmp, as the
                container init's socket path must fit in ``sun_path``).
        """
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.socket = self.dir / "corral.sock"
        self.depot = self.dir / "depot"
        self.log = self.dir / "corrald.log"
        self.config = self.dir / "corral.toml"
        #: The config's tables; :meth:`configure` changes them before a start.
        self.tables: Tables = {
            "daemon": {"socket": self.socket, "depot": self.depot, "log_level": "debug"},
            "containers": {"rootfs": rootfs, "stop_timeout": 2},
            "isolation": {"init": init},
            "cgroups": {"parent": f"corral-test-{self.dir.name}"},
            "net": _unique_network(self.dir.name),
        }
        self.configure(tables or {})
        # Not the service manager's address of a test run that is itself a service: only
        # the daemons given one (tests/test_service.py) report to a NOTIFY_SOCKET.
        inherited = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.env = {**inherited, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def cgroup_parent(self) -> str:
        return str(self.tables["cgroups"]["parent"])

    @property
    def net(self) -> dict[str, Any]:
        """The ``[net]`` table (empty when the daemon has none)."""
        return self.tables.get("net", {})

    def configure(self, tables: TableChanges) -> None:
        """Merge *tables* into the config, key by key (a table given as None is dropped)."""
        for name, values in tables.items():
            if values is None:
                self.tables.pop(name, None)
            else:
                self.tables.setdefault(name, {}).update(values)
        self.config.write_text(render_toml(self.tables))

    def start(self, timeout: float = 30) -> PrivateDaemon:
        """Start the daemon and wait until it answers a ping.

        Raises:
            RuntimeError: it exited or did not answer (then it is killed); the message ends
                with its log.
        """
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corrald exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                with self.client(timeout=5) as c:
                    c.ping()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill9()
        raise RuntimeError(f"corrald did not answer:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float | None = 60) -> Client:
        return Client(self.socket, timeout=timeout)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def log_records(self, event: str) -> list[dict[str, Any]]:
        """The daemon's log records (JSON lines) of *event*."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                with suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM: the daemon detaches its containers and exits; its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def destroy_all(self) -> None:
        """Destroy every container; the first that fails to go raises."""
        with self.client() as c:
            for handle in c.list():
                c.destroy(handle)

    def inits(self) -> list[int]:
        """Pids of the live container inits (and launchers) of this daemon's depot."""
        label = str(self.depot).encode() + b"/"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) >= 3 and argv[1] == b"launch" and argv[2].startswith(label):
                found.append(int(entry.name))
        return found

    def stop(self, timeout: float = 30) -> list[int]:
        """Destroy what is left and stop the daemon, killing it if it does not exit within
        *timeout* seconds, then the inits it left, if any (the directory stays).

        Returns:
            The pids of the inits left behind, which were killed.

        Raises:
            CorralError: a container could not be destroyed (the rest is done all the same).
        """
        left: list[int] = []
        try:
            if self.running:
                self.destroy_all()
        finally:
            if self.running:
                try:
                    self.terminate(timeout)
                except subprocess.TimeoutExpired:
                    self.kill9()
            left = self.inits()
            for pid in left:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return left

    def close(self) -> None:
        """:meth:`stop`, then remove the daemon's directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
