"""Spawn OPTS ``argv`` and ``user`` ``UID:GID``; a client closing while it waits for a
job ends its request, so its references (and a grace-0 container) go at once."""

from __future__ import annotations

import socket
import time

import pytest

from supervisor.client import Client
from supervisor.errors import InvalidRequest
from tests.conftest import Daemon


def test_argv_runs_a_program_without_a_shell(client: Client, container: str) -> None:
    status, out, _ = client.run(container, "", argv=["printf", "%s|", "a b", "$HOME", "'"])
    assert (status, out) == (0, "a b|$HOME|'|")
    with pytest.raises(InvalidRequest, match='SCRIPT must be "" with argv'):
        client.spawn(container, "echo", argv=["true"])
    with pytest.raises(InvalidRequest, match="argv must be a list of strings"):
        client.spawn(container, "", argv=[])
    with pytest.raises(InvalidRequest, match="argv must be a list of strings"):
        client.spawn(container, "", argv=["echo", 3])


def test_user_uid_gid_needs_no_passwd_entry(client: Client, container: str) -> None:
    assert client.run(container, "id", user="99:98")[1].startswith("uid=99 gid=98")
    # a uid of /etc/passwd keeps its name and home, with the group given
    out = client.run(container, 'id; echo "$HOME"', user="0:98", privileged=True)[1]
    assert out.startswith("uid=0(root) gid=98") and out.endswith("/root\n")
    for bad in ("99:", ":98", "corral:98", "99:98:1"):
        with pytest.raises(InvalidRequest, match="UID:GID"):
            client.spawn(container, "id", user=bad)


@pytest.mark.parametrize("command", ["stream", "link"])
def test_a_client_closing_while_it_waits_releases_the_container(
    daemon: Daemon, client: Client, command: str
) -> None:
    handle = client.create({"grace_time": 0})
    job = client.spawn(handle, "sleep 60")  # silent: nothing would reach a dead reader
    waiter = socket.socket(socket.AF_UNIX)
    waiter.connect(str(daemon.socket))
    waiter.sendall(f'["{command}", "{handle}", {job}]\n'.encode())
    time.sleep(0.3)
    client.close()  # only the waiter references it now
    with daemon.client() as other:
        assert other.list() == [handle]
        waiter.close()
        deadline = time.monotonic() + 5
        while other.list() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert other.list() == []


def test_a_half_closed_client_still_gets_its_reply(
    daemon: Daemon, client: Client, container: str
) -> None:
    job = client.spawn(container, "sleep 0.5; echo done")
    waiter = socket.socket(socket.AF_UNIX)
    waiter.connect(str(daemon.socket))
    waiter.sendall(f'["link", "{container}", {job}]\n'.encode())
    waiter.shutdown(socket.SHUT_WR)
    reply = waiter.makefile("rb").readline()
    waiter.close()
    assert b'"done\\n"' in reply
