"""A ``socket_group`` member reaches through ``copy`` only the host files it could reach itself.

The client runs in a forked child that drops to an unprivileged uid, with the
socket's group as a supplementary group (so the daemon must take the groups
from the connection, not from the primary gid), then connects to a daemon whose
socket is 0660 with ``socket_group``.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon

UID = GID = 4242
GROUP = "nogroup"


@pytest.fixture(scope="module")
def group_daemon(artifacts: tuple[Path, Path]) -> Iterator[Daemon]:
    d = Daemon(*artifacts, tables={"daemon": {"socket_group": GROUP}})
    d.dir.chmod(0o711)  # mkdtemp made it 0700: the client must reach the socket in it
    d.start()
    yield d
    d.close()


def as_client(
    daemon: Daemon, requests: list[list[Any]], groups: tuple[int, ...] | None = None
) -> list[Any]:
    """The replies to *requests*, sent on one connection by a process of uid :data:`UID`
    (supplementary groups: the socket's group, unless *groups* is given); a string
    naming the error when it cannot connect."""
    if groups is None:
        groups = (grp.getgrnam(GROUP).gr_gid,)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setgid(GID)
            os.setuid(UID)
            replies: list[Any] = []
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(daemon.socket))
                    f = sock.makefile("rwb")
                    for request in requests:
                        f.write(json.dumps(request).encode() + b"\n")
                        f.flush()
                        replies.append(json.loads(f.readline()))
            except OSError as exc:
                replies = [f"connect: {exc.strerror}"]
            with os.fdopen(write_end, "wb") as out:
                out.write(json.dumps(replies).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"the client process failed ({status})"
    return json.loads(data)  # type: ignore[no-any-return]


def error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["type"] == "error", reply
    return reply["payload"]["code"], reply["payload"]["message"]


@pytest.fixture
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A host directory the client may enter: its own subdirectory ``own`` (with a file,
    symlinks to a 0700 root directory and to /etc, and room for copies out), a 0600 root
    file, and a 0640 file of the socket's group."""
    base = Path(tempfile.mkdtemp(prefix="crl-creds-", dir="/tmp"))
    base.chmod(0o755)
    own = base / "own"
    own.mkdir(mode=0o700)
    (own / "file").write_text("mine\n")
    (own / "out").mkdir()
    (base / "private").mkdir(mode=0o700)
    (base / "private" / "key").write_text("root's\n")
    os.symlink(base / "private", own / "to-private")
    os.symlink("/etc", own / "to-etc")
    for path in [own, *own.iterdir()]:
        os.lchown(path, UID, GID)
    (own / "file").chmod(0o600)
    (base / "secret").write_text("root only\n")
    (base / "secret").chmod(0o600)
    (base / "grouped").write_text("group\n")
    os.chown(base / "grouped", 0, grp.getgrnam(GROUP).gr_gid)
    (base / "grouped").chmod(0o640)
    yield base
    shutil.rmtree(base)


def test_a_non_root_client_copies_only_what_it_could_reach_itself(
    group_daemon: Daemon, host: Path
) -> None:
    own, name = host / "own", f"corral-creds-{uuid.uuid4().hex[:8]}"
    with group_daemon.client() as root:
        handle = root.create()
        try:
            assert root.run(handle, "echo payload > /tmp/payload")[0] == 0
            replies = as_client(
                group_daemon,
                [
                    ["copy", handle, "in", "/etc/shadow", "/tmp/shadow"],
                    ["copy", handle, "in", str(host / "secret"), "/tmp/secret"],
                    ["copy", handle, "in", "/proc/self/root/etc/shadow", "/tmp/magic"],
                    ["copy", handle, "in", f"{own}/to-private/", "/tmp/private"],
                    ["copy", handle, "out", "/tmp/payload", f"/root/{name}"],
                    ["copy", handle, "out", "/tmp/payload", f"/etc/{name}"],
                    ["copy", handle, "out", "/tmp/payload", f"{own}/to-etc/{name}"],
                    ["copy", handle, "out", "/tmp/payload", f"{own}/out/root", "0:0"],
                    ["copy", handle, "out", "/tmp/payload", f"{own}/out/root", "root"],
                    # what it may reach: its own files, and one of its groups'
                    ["copy", handle, "in", str(own / "file"), "/tmp/mine"],
                    ["copy", handle, "in", str(host / "grouped"), "/tmp/grouped"],
                    ["copy", handle, "out", "/tmp/payload", f"{own}/out/p"],
                    ["copy", handle, "out", "/tmp/payload", f"{own}/out/g", f"{UID}:{GROUP}"],
                ],
            )
            refused, allowed = replies[:9], replies[9:]
            for reply in refused[:7]:
                code, message = error(reply)
                assert code == "invalid_request"
                assert "Permission denied" in message or "symbolic links" in message, message
            for reply in refused[7:]:
                code, message = error(reply)
                assert code == "invalid_request" and "OWNER" in message, message
                assert f"uid {UID} may give only itself" in message
            assert allowed == [{"type": "object", "payload": "ok"}] * 4
            status, out, _ = root.run(
                handle,
                "cat /tmp/mine /tmp/grouped; ls /tmp/shadow /tmp/secret /tmp/magic /tmp/private",
            )
            assert out == "mine\ngroup\n" and status != 0
        finally:
            root.destroy(handle)
            planted = [Path(f"/root/{name}"), Path(f"/etc/{name}"), own / "out" / "root"]
            found = [path for path in planted if path.exists()]
            for path in found:
                path.unlink()  # a failed run leaves nothing on the host
    assert found == []
    assert (own / "out" / "p").read_text() == "payload\n"
    st = (own / "out" / "p").stat()
    assert (st.st_uid, st.st_gid) == (UID, GID)  # its own, not root's
    st = (own / "out" / "g").stat()
    assert (st.st_uid, st.st_gid) == (UID, grp.getgrnam(GROUP).gr_gid)


def test_root_still_reaches_every_host_file(group_daemon: Daemon, host: Path) -> None:
    target = Path(f"/root/corral-creds-{uuid.uuid4().hex[:8]}")
    try:
        with group_daemon.client() as root:
            handle = root.create()
            try:
                root.call("copy", handle, "in", "/etc/shadow", "/tmp/shadow")
                root.call("copy", handle, "in", str(host / "secret"), "/tmp/secret")
                assert root.run(handle, "cat /tmp/secret")[1] == "root only\n"
                root.call("copy", handle, "out", "/tmp/secret", str(target))
                root.call("copy", handle, "out", "/tmp/secret", f"{host}/own/out/x", "0:0")
            finally:
                root.destroy(handle)
        assert target.read_text() == "root only\n"
        assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)
    finally:
        target.unlink(missing_ok=True)


def test_a_client_outside_the_group_cannot_connect(group_daemon: Daemon) -> None:
    assert as_client(group_daemon, [["ping"]], groups=()) == ["connect: Permission denied"]
    assert as_client(group_daemon, [["ping"]]) == [{"type": "object", "payload": "pong"}]
