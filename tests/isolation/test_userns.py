"""User namespaces (issue #17): each container's ids are a block of host ids of its own.

Through the real daemon: the ids its processes have on the host, the owners its root
and binds show, what its root writes to disk, copies, restart, and the host's ids
on request.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugins.isolation import userns
from plugins.isolation.userns import BLOCK
from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, init_pid, wait_until

CORRAL_UID = 10000  # the unprivileged account of the test rootfs


@pytest.fixture(scope="module")
def no_own_ids(artifacts: tuple[Path, Path], daemon: Daemon) -> str | None:
    """Why containers cannot have ids of their own here (the daemon's own probe), or None."""
    return userns.probe(artifacts[0], 0x10000000, [daemon.depot])


@pytest.fixture(autouse=True)
def own_ids(request: pytest.FixtureRequest, no_own_ids: str | None) -> None:
    if no_own_ids is not None and "host_ids_only" not in request.keywords:
        pytest.skip(f"containers get the host's ids here: {no_own_ids}")


def host_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of host process *pid*."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def first_id(client: Client, handle: str) -> int:
    ids = client.info(handle)["ids"]
    assert isinstance(ids, dict) and ids["count"] == BLOCK, ids
    return int(ids["first"])


def host_pid_of_job(daemon: Daemon, handle: str, marker: str) -> int:
    """The host pid of the container's process whose cmdline holds *marker*."""
    init = init_pid(daemon, handle)

    def find() -> int | None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == init:
                continue
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
        return None

    pid = wait_until(find, what=f"a process running {marker}")
    assert pid is not None
    return pid


def test_a_container_has_a_block_of_host_ids_of_its_own(
    client: Client, daemon: Daemon, container: str
) -> None:
    first = first_id(client, container)
    status, out, err = client.run(container, "cat /proc/self/uid_map /proc/self/gid_map; id")
    assert status == 0, err
    uid_map, gid_map, ids = out.splitlines()
    assert uid_map.split() == gid_map.split() == ["0", str(first), str(BLOCK)]
    assert ids.startswith(f"uid={CORRAL_UID}(corral)")
    # PID 1 is the container's root: an unprivileged host user, not the host's root.
    assert host_ids(init_pid(daemon, container)) == (first, first)


def test_root_in_the_container_is_an_unprivileged_host_user(
    client: Client, daemon: Daemon, container: str
) -> None:
    first = first_id(client, container)
    for privileged, uid in ((True, 0), (False, CORRAL_UID)):
        marker = str(770000 + uid)  # seconds slept: its cmdline tells it
        job = client.spawn(container, f"exec sleep {marker}", privileged=privileged)
        try:
            pid = host_pid_of_job(daemon, container, marker)
            assert host_ids(pid) == (first + uid, first + uid)
        finally:
            client.signal(container, job, "KILL")
    # Its capabilities are the container's: the host's files stay out of reach.
    status, out, _ = client.run(
        container, "cat /proc/1/environ >/dev/null 2>&1 && echo READ", privileged=True
    )
    assert "READ" not in out


def test_two_containers_never_share_a_block(client: Client) -> None:
    a, b = client.create(), client.create()
    try:
        first_a, first_b = first_id(client, a), first_id(client, b)
        assert abs(first_a - first_b) >= BLOCK
    finally:
        client.destroy(a)
        client.destroy(b)


def test_the_root_and_its_writes_keep_the_ids_on_disk(
    client: Client, daemon: Daemon, container: str
) -> None:
    status, out, err = client.run(
        container,
        "stat -c %u:%g / /etc/passwd /tmp; touch /root-made; "
        "chown 1234:1234 /root-made; mkdir /d; chmod 700 /d",
        privileged=True,
    )
    assert status == 0, err
    assert out.split() == ["0:0", "0:0", "0:0"]
    status, _, err = client.run(container, "echo hi > /tmp/corral-made")
    assert status == 0, err
    upper = daemon.depot / container / "upper"
    owners = {name: os.lstat(upper / name)[4:6] for name in ("root-made", "d", "tmp/corral-made")}
    assert owners == {
        "root-made": (1234, 1234),
        "d": (0, 0),
        "tmp/corral-made": (CORRAL_UID, CORRAL_UID),
    }


def test_bind_mounts_show_their_owners(client: Client, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "by-root").write_text("r")
    (shared / "by-1234").write_text("u")
    os.chown(shared / "by-1234", 1234, 1234)
    handle = client.create({"bind_mounts": [[str(shared), "/shared", {"mode": "rw"}]]})
    try:
        status, out, err = client.run(
            handle,
            "stat -c %n:%u /shared/by-root /shared/by-1234; echo x > /shared/new",
            privileged=True,
        )
        assert status == 0, err
        assert out.split() == ["/shared/by-root:0", "/shared/by-1234:1234"]
        assert os.lstat(shared / "new").st_uid == 0
    finally:
        client.destroy(handle)


def test_copy_in_belongs_to_the_container_user(
    client: Client, daemon: Daemon, container: str, tmp_path: Path
) -> None:
    source = tmp_path / "file"
    source.write_text("content")
    client.call("copy", container, "in", str(source), "/tmp/copied")
    status, out, err = client.run(container, "stat -c %u:%g /tmp/copied; cat /tmp/copied")
    assert status == 0, err
    assert out.split() == [f"{CORRAL_UID}:{CORRAL_UID}", "content"]
    assert os.lstat(daemon.depot / container / "upper/tmp/copied")[4:6] == (CORRAL_UID, CORRAL_UID)


@pytest.mark.host_ids_only
def test_without_own_ids_containers_get_the_hosts(client: Client, no_own_ids: str | None) -> None:
    """Where the kernel or the depot's filesystem cannot map ids (the cgroup-v2 guest: its
    root is an overlay over 9p), the default is the host's ids and asking is refused."""
    if no_own_ids is None:
        pytest.skip("containers have ids of their own here (see the cgroup-v2 guest's run)")
    handle = client.create()
    try:
        assert client.info(handle)["ids"] == "host"
        assert client.run(handle, "cat /proc/self/uid_map")[1].split() == ["0", "0", "4294967295"]
    finally:
        client.destroy(handle)
    with pytest.raises(errors.InvalidRequest, match="ids of their own"):
        client.create({"userns": True})


@pytest.mark.host_ids_only
def test_the_host_ids_on_request(client: Client, daemon: Daemon) -> None:
    handle = client.create({"userns": False})
    try:
        assert client.info(handle)["ids"] == "host"
        status, out, err = client.run(handle, "cat /proc/self/uid_map", privileged=True)
        assert status == 0, err
        assert out.split() == ["0", "0", "4294967295"]
        assert host_ids(init_pid(daemon, handle)) == (0, 0)
    finally:
        client.destroy(handle)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_a_bad_userns_option_is_refused(client: Client, value: object) -> None:
    with pytest.raises(errors.InvalidRequest, match="userns"):
        client.create({"userns": value})


def test_a_restart_keeps_the_blocks(fresh_daemon: Daemon) -> None:
    with fresh_daemon.client() as client:
        kept = client.create()
        first = first_id(client, kept)
    assert fresh_daemon.terminate() == 0  # the container goes on without a daemon
    fresh_daemon.start()
    with fresh_daemon.client() as client:
        assert first_id(client, kept) == first
        status, out, _ = client.run(kept, "cat /proc/self/uid_map")
        assert (status, out.split()[1]) == (0, str(first))
        new = client.create()
        try:
            assert first_id(client, new) != first  # the restored container's block is taken
        finally:
            client.destroy(new)
            client.destroy(kept)
