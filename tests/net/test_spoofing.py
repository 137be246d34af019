"""A container cannot send packets with another's source address, nor to the host's loopback.

The forging job is played by the test itself: a Python process in the sending container's
network namespace (``nsenter --net``), root there like a privileged job with CAP_NET_RAW.
Traffic stays among this test's containers and the host's own addresses.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from supervisor.client import Client
from tests.conftest import Daemon, init_pid

#: In the receiving container: the sources of the TCP SYNs to PORT, in order of arrival,
#: until the SYN from LEGIT (sent after the forged one, on the same path) has come.
CAPTURE = """
import socket, sys
port, legit = int(sys.argv[1]), sys.argv[2]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.settimeout(20)
print("ready", flush=True)
while True:
    packet = raw.recv(65535)
    header = (packet[0] & 0x0F) * 4
    source = socket.inet_ntoa(packet[12:16])
    dport = int.from_bytes(packet[header + 2 : header + 4], "big")
    syn = packet[header + 13] & 0x02
    if dport == port and syn:
        print(source, flush=True)
        if source == legit:
            break
"""

#: In the sending container: a SYN to TARGET:PORT from FORGED (bound with IP_TRANSPARENT,
#: as a privileged job could), then one from its own address.
FORGE = """
import socket, sys, time
forged, target, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
IP_TRANSPARENT = 19  # linux/in.h
sockets = []
for source in (forged, None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if source:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((source, 0))
    s.setblocking(False)
    s.connect_ex((target, port))
    sockets.append(s)
time.sleep(1)  # the SYNs are out; their answers do not matter
"""


def _in_namespace(pid: int, script: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", script, *args]


def _syn_sources(
    daemon: Daemon, c: Client, sender: str, receiver: str, forged: str, target: str
) -> list[str]:
    """Sources of the SYNs to the receiver's port 7100, published, that it got before the
    sender's own (see CAPTURE)."""
    legit = c.info(sender)["container_ip"]
    port = c.call("net", receiver, "in", {"container_port": 7100})["host_port"]
    with subprocess.Popen(
        _in_namespace(init_pid(daemon, receiver), CAPTURE, "7100", legit),
        stdout=subprocess.PIPE,
        text=True,
    ) as capture:
        assert capture.stdout is not None
        assert capture.stdout.readline() == "ready\n"
        subprocess.run(
            _in_namespace(init_pid(daemon, sender), FORGE, forged, target, str(port)),
            check=True,
            timeout=30,
        )
        out, _ = capture.communicate(timeout=30)
    assert capture.returncode == 0, "the sender's own SYN never arrived"
    sources = out.split()
    assert sources[-1] == legit
    return sources[:-1]


@pytest.mark.parametrize("network", [None, {"bridge": "lan"}], ids=["pool", "bridge"])
def test_a_forged_source_address_is_dropped(
    daemon: Daemon, client: Client, network: dict[str, str] | None
) -> None:
    """A SYN forged with container C's address, sent by A to B's published port (DNAT'd,
    so the forward chain lets it through), is dropped at A's device (its veth, or its
    bridge); A's own reaches B."""
    a = client.create({"network": network} if network else None)
    b, c_ = client.create(), client.create()
    try:
        gateway = client.info(a)["host_ip"]
        forged = client.info(c_)["container_ip"]
        sources = _syn_sources(daemon, client, a, b, forged, gateway)
        assert forged not in sources
    finally:
        for handle in (a, b, c_):
            client.destroy(handle)


#: In the container's namespace: send a datagram to 127.0.0.1:PORT out of eth0 to the host
#: (what a job with CAP_NET_RAW does with a crafted frame); then a TCP SYN to the gateway,
#: whose answer (a reset) says the host has handled what came before it from this device.
TO_HOST_LOOPBACK = """
import socket, subprocess, sys
gateway, port = sys.argv[1], int(sys.argv[2])
subprocess.run(["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"], check=True)  # 127/8 not local
with open("/proc/sys/net/ipv4/conf/eth0/route_localnet", "w") as f:
    f.write("1")  # 127/8 may leave by eth0
subprocess.run(["ip", "route", "add", "127.0.0.1/32", "via", gateway, "dev", "eth0"], check=True)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"forged", ("127.0.0.1", port))
probe = socket.socket()
probe.settimeout(10)
print(probe.connect_ex((gateway, 9)))
"""


def test_the_hosts_loopback_is_unreachable_even_with_host_access(
    net_daemon: Callable[..., Daemon],
) -> None:
    """route_localnet on Corral's devices (for `net in` to 127.0.0.1) must not let a
    container reach a host service bound to 127.0.0.1 with packets addressed to it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    d = net_daemon(allow_host_access="true")
    try:
        with d.client() as c:
            handle = c.create()
            script = _in_namespace(
                init_pid(d, handle), TO_HOST_LOOPBACK, c.info(handle)["host_ip"], str(port)
            )
            done = subprocess.run(script, capture_output=True, text=True, timeout=30)
            assert done.stdout.strip() == str(errno.ECONNREFUSED), done.stdout + done.stderr
            with pytest.raises(BlockingIOError):
                got = listener.recv(100)
                raise AssertionError(f"the container reached 127.0.0.1:{port}: {got!r}")
            c.destroy(handle)
    finally:
        listener.close()
