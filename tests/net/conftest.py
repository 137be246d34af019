"""Helpers of the network tests: daemons with [net] overrides, and outside namespaces.

Traffic in these tests only ever goes to loopback, to containers, to the host's
own addresses, or to an :class:`Outside` namespace the test made. Outside
namespaces take addresses from 198.18.0.0/15 (RFC 2544, benchmarking), which
this suite treats as test-only: one /30 each, host end .1, namespace end .2.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from supervisor.client import Client
from tests.conftest import Daemon, device_leftovers

#: Test-only range for outside namespaces (RFC 2544 benchmarking addresses).
OUTSIDE_RANGE = "198.18.0.0/15"
HTTP_PAGE = "hello from corral\n"


def net_settings(daemon: Daemon) -> dict[str, Any]:
    """The [net] table the daemon was configured with."""
    return daemon.net


Override = str | Callable[[dict[str, Any]], str]


def override_net(daemon: Daemon, **values: Override) -> None:
    """Set keys of the daemon's [net] table before it starts.

    A value is a TOML literal, or a function of the daemon's own [net] settings
    returning one (to derive e.g. a small pool from the daemon's unique one).
    """
    settings = net_settings(daemon)
    daemon.configure(
        {
            "net": {
                key: tomllib.loads(f"v = {value(settings) if callable(value) else value}")["v"]
                for key, value in values.items()
            }
        }
    )


@pytest.fixture
def net_daemon(artifacts: tuple[Path, Path]) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``net_daemon(quarantine="0", ...)`` starts a daemon with those [net] values."""
    made: list[Daemon] = []

    def make(**values: Override) -> Daemon:
        d = Daemon(*artifacts)
        override_net(d, **values)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        if d.process is not None and d.process.poll() is not None:
            d.start()
        d.close()


def devices(prefix: str) -> list[str]:
    """Host devices whose name starts with *prefix*."""
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(d["ifname"] for d in json.loads(out) if d["ifname"].startswith(prefix))


def table_rules(table: str) -> list[dict[str, Any]] | None:
    """Rules of the daemon's nftables table (None when the table does not exist)."""
    done = subprocess.run(
        ["nft", "-j", "list", "table", "inet", table], capture_output=True, text=True
    )
    if done.returncode != 0:
        return None
    return [i["rule"] for i in json.loads(done.stdout)["nftables"] if "rule" in i]


def host_addresses() -> list[str]:
    """Every IPv4 address of the host, as ``A.B.C.D/NN``."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out.stdout)
        for a in link.get("addr_info", [])
    ]


def net_leftovers(daemon: Daemon, handle: str | None = None) -> dict[str, Any]:
    """What of this daemon's network is left: devices, per-container rules, pool addresses."""
    settings = net_settings(daemon)
    rules = table_rules(settings["table"]) or []
    ours = [IPv4Network(settings["pool"]), *map(IPv4Network, settings.get("bridges", {}).values())]
    return {
        "devices": device_leftovers(daemon),  # waits for veths still going with their netns
        "rules": [
            r.get("comment")
            for r in rules
            if r.get("comment") != "corral:base" and (handle is None or r.get("comment") == handle)
        ],
        "addresses": [
            a for a in host_addresses() if any(IPv4Interface(a).ip in net for net in ours)
        ],
    }


# -- outside namespaces ------------------------------------------------------------

_outside_count = 0


class Outside:
    """A network namespace standing for a host outside, linked to this host by a veth.

    The namespace is held by a ``sleep`` process of its own (``unshare --net``), so no
    ``/run/netns`` mount is made; killing that process removes the namespace and its
    veth with it. Commands run in it through ``nsenter --net``.
    """

    def __init__(self) -> None:
        global _outside_count
        _outside_count += 1
        n = (os.getpid() * 8 + _outside_count) % (1 << 15)
        base = (198 << 24) | (18 << 16) | (n << 2)  # a /30 in 198.18.0.0/15
        self.host_ip = str(IPv4Address(base + 1))
        self.ip = str(IPv4Address(base + 2))
        self.device = f"zo{os.getpid() % 100000}x{_outside_count}"
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        try:
            self._wait_for_namespace()
            sh = ["ip", "link", "add", self.device, "type", "veth", "peer", "name", "eth0"]
            subprocess.run([*sh, "netns", str(self.holder.pid)], check=True)
            subprocess.run(
                ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.device], check=True
            )
            subprocess.run(["ip", "link", "set", self.device, "up"], check=True)
            self.run_ok("ip", "addr", "add", f"{self.ip}/30", "dev", "eth0")
            self.run_ok("ip", "link", "set", "eth0", "up")
            self.run_ok("ip", "link", "set", "lo", "up")
            self.run_ok("ip", "route", "add", "default", "via", self.host_ip)
        except BaseException:
            self.close()
            raise

    def _wait_for_namespace(self) -> None:
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.readlink(self.netns) != own:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("unshare --net did not make a namespace")

    def command(self, *argv: str) -> list[str]:
        """*argv* run inside the namespace."""
        return ["nsenter", f"--net={self.netns}", *argv]

    def run_ok(self, *argv: str) -> None:
        subprocess.run(self.command(*argv), check=True)

    def python(self, code: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run Python *code* in the namespace and wait for it."""
        return subprocess.run(
            self.command(sys.executable, "-c", code),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def serve(self, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> Path:
        """Listen on TCP ports (answering ``pong``) and UDP ports; return the log of what arrived."""
        log = Path(f"/tmp/corral-outside-{os.getpid()}-{self.device}.log")
        log.write_text("")
        code = LISTENER.format(ip=self.ip, tcp=list(tcp), udp=list(udp), log=str(log))
        p = subprocess.Popen(self.command(sys.executable, "-c", code))
        self._processes.append(p)
        deadline = time.monotonic() + 10
        while "ready" not in log.read_text():
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError("listener in the outside namespace did not start")
            time.sleep(0.02)
        self._logs.append(log)
        return log

    def close(self) -> None:
        for p in self._processes:
            p.kill()
            p.wait()
        for log in self._logs:
            log.unlink(missing_ok=True)
        self.holder.send_signal(signal.SIGKILL)
        self.holder.wait()
        subprocess.run(["ip", "link", "del", self.device], capture_output=True)


LISTENER = """
import socket, selectors, sys
sel = selectors.DefaultSelector()
log = open({log!r}, "a", buffering=1)
for port in {tcp}:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(({ip!r}, port)); s.listen(8); sel.register(s, selectors.EVENT_READ, ("tcp", port))
for port in {udp}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(({ip!r}, port)); sel.register(s, selectors.EVENT_READ, ("udp", port))
log.write("ready\\n")
while True:
    for key, _ in sel.select():
        kind, port = key.data
        if kind == "tcp":
            conn, peer = key.fileobj.accept()
            conn.sendall(b"pong\\n"); conn.close()
        else:
            data, peer = key.fileobj.recvfrom(2048)
        log.write(f"{{kind}} {{port}} from {{peer[0]}}\\n")
"""


@pytest.fixture
def outside() -> Iterator[Outside]:
    """An outside namespace, removed after the test."""
    o = Outside()
    yield o
    o.close()


# -- host-side helpers ---------------------------------------------------------------


class HostListener:
    """A TCP listener of the host itself (answers ``pong``), in a thread of the test."""

    def __init__(self, address: str = "0.0.0.0") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.sendall(b"pong\n")
            conn.close()

    def close(self) -> None:
        # shutdown wakes the thread's accept(); close alone would leave it (and the port
        # listening) for the rest of the test run.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=10)


def http_get(address: str, port: int, timeout: float = 5) -> str:
    """GET / from the host itself."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode(errors="replace")


def wait_listening(c: Client, handle: str, port: int, timeout: float = 10) -> None:
    """Wait until something in the container listens on TCP *port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, out, _ = c.run(handle, "netstat -ltn")
        if f":{port} " in out:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in container {handle}")


def start_httpd(c: Client, handle: str, port: int = 8080) -> int:
    """Run ``busybox httpd`` as a job serving :data:`HTTP_PAGE`; return the job id."""
    job = c.spawn(
        handle,
        f"mkdir -p /tmp/www && printf '{HTTP_PAGE.strip()}\\n' > /tmp/www/index.html && "
        f"exec busybox httpd -f -p {port} -h /tmp/www",
    )
    wait_listening(c, handle, port)
    return job
