"""A container cannot send packets with another's source address.

The forging job is played by the test itself: a Python process in the sending container's
network namespace (``nsenter --net``), root there like a privileged job with CAP_NET_RAW.
Traffic stays among this test's containers and the host's own addresses.
"""

from __future__ import annotations

import subprocess
import sys

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
