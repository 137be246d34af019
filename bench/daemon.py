"""The bench's private corrald, with its own config, depot, socket and cgroup parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench.host import (
    BASE_ROOTFS,
    DEVNULL,
    INIT,
    NET_POOL,
    NET_PREFIX,
    NET_TABLE,
    Proc,
    log,
    processes,
)
from supervisor.client import Client
from supervisor.testing import REPO


class BenchDaemon:
    """A corrald subprocess with its own config, depot, socket and cgroup parent."""

    def __init__(self, workdir: Path, prefix: str, output_limit: int) -> None:
        self.dir = workdir / "corral"
        self.dir.mkdir()
        self.socket = self.dir / "corral.sock"
        self.depot = self.dir / "depot"
        self.log = self.dir / "corrald.log"
        self.config = self.dir / "corral.toml"
        self.cgroup_parent = f"{prefix}corral"
        self.output_limit = output_limit
        self.process: subprocess.Popen[bytes] | None = None
        self.blocked: list[str] = []
        self.plugins: list[str] = []
        self.notes: list[str] = []

    def _write_config(self, with_net: bool) -> None:
        text = (
            f'[daemon]\nsocket = "{self.socket}"\ndepot = "{self.depot}"\nlog_level = "info"\n'
            f'[containers]\nrootfs = "{BASE_ROOTFS}"\ngrace_time = false\nstop_timeout = 2\n'
            f"output_limit = {self.output_limit}\n"
            f'[isolation]\ninit = "{INIT}"\n'
            f'[cgroups]\nparent = "{self.cgroup_parent}"\n'
        )
        if with_net:
            # Own nftables table, device names and address pool, so a network plugin that
            # is live never touches another daemon's; large enough for the density run.
            text += (
                f'[net]\ntable = "{NET_TABLE}"\ninterface_prefix = "{NET_PREFIX}"\n'
                f'pool = "{NET_POOL}"\n'
            )
        self.config.write_text(text)

    def start(self) -> None:
        """Start with every plugin; if that fails, block unfinished ones (net, cgroups, both)."""
        attempts: list[tuple[list[str], bool]] = [
            ([], True),
            (["net"], False),
            (["cgroups"], True),
            (["net", "cgroups"], False),
        ]
        errors: list[str] = []
        for blocked, with_net in attempts:
            self._write_config(with_net)
            try:
                self._start(blocked)
                with Client(self.socket, timeout=60) as c:  # one real container proves it works
                    handle = c.create()
                    status, _, err = c.run(handle, "/bin/true")
                    c.destroy(handle)
                    if status != 0:
                        raise RuntimeError(f"/bin/true exited {status}: {err}")
                self.blocked = blocked
                if blocked:
                    self.notes.append(
                        f"corrald ran with plugins blocked: {', '.join(blocked)} (it failed with them: "
                        f"{errors[-1][:300]})"
                    )
                self.plugins = self._plugin_names()
                return
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                log(f"corrald (blocked={blocked}) failed: {errors[-1][:300]}")
                self.stop()
                if "in use by another corrald" in str(exc):
                    # Another run of this benchmark: figures without a network would mislead.
                    raise RuntimeError(
                        f"another benchmark is running: {errors[-1][:300]}"
                    ) from None
        raise RuntimeError("corrald would not run a container: " + " | ".join(errors))

    def _start(self, blocked: list[str]) -> None:
        env = {**os.environ, "CORRAL_BLOCK_PLUGINS": ",".join(blocked)}
        with open(self.log, "ab") as logf:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon", "--config", str(self.config)],
                stdout=logf,
                stderr=logf,
                stdin=DEVNULL,
                env=env,
                cwd=str(REPO),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"corrald exited {self.process.returncode}: {self.log_tail()}")
            try:
                with Client(self.socket, timeout=5) as c:
                    c.ping()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"corrald did not answer: {self.log_tail()}")

    def _plugin_names(self) -> list[str]:
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            if "corrald ready" in line:
                with suppress(ValueError):
                    return list(json.loads(line).get("plugins", []))
        return []

    def log_records(self, event: str) -> list[dict[str, Any]]:
        """The daemon's log records of *event*."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                with suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def log_tail(self, n: int = 2000) -> str:
        """The end of the daemon's log."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the daemon was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 120) -> Client:
        """A new connection to the daemon."""
        return Client(self.socket, timeout=timeout)

    def container_inits(self) -> list[Proc]:
        """The live container inits (PID 1 of each container) of this daemon's depot."""
        depot = str(self.depot).encode()
        return [
            p
            for p in processes()
            if len(p.argv) >= 3
            and p.argv[0] == str(INIT).encode()
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

    def destroy_all(self) -> None:
        """Destroy every container the daemon has (one failing does not keep the rest)."""
        with self.client() as c:
            for handle in c.list():
                with suppress(Exception):
                    c.destroy(handle)

    def stop(self) -> None:
        """Destroy what is left, stop the daemon, kill any init it left behind."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.destroy_all()
            except Exception as exc:
                self.notes.append(f"destroy_all failed: {exc}")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        left = self.container_inits()
        for p in left:
            with suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        if left:
            self.notes.append(f"killed {len(left)} container init(s) left by corrald")
            time.sleep(0.5)
        self.process = None
