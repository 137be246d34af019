"""``fuse`` (issue #19): /dev/fuse, and privileged jobs that may mount FUSE filesystems
in a mount namespace of the container's own user namespace.

A static FUSE server (``fuse_hello.c``, compiled here, bound read-only into the
containers) mounts one file, ``hello``, and serves it in the background.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import NOTHING_LEFT, Daemon, leftovers
from tests.isolation.test_init import PRIVILEGED_CAPS as INIT_PRIVILEGED_CAPS

SOURCE = Path(__file__).with_name("fuse_hello.c")
#: A privileged job's capabilities anywhere (tests/isolation/test_init.py), and the one more here.
PRIVILEGED_CAPS = sum(1 << cap for cap in INIT_PRIVILEGED_CAPS)
CAP_SYS_ADMIN = 21
CONTENT = "hello from FUSE\n"

pytestmark = pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse on this host")


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuse")
    directory.chmod(0o755)
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(directory / "fuse_hello"), str(SOURCE)], check=True
    )
    return directory


def create(client: Client, server_dir: Path, **config: object) -> str:
    return client.create({"bind_mounts": [[str(server_dir), "/probe"]], **config})


@pytest.fixture
def fuse_container(client: Client, server_dir: Path) -> Iterator[str]:
    handle = create(client, server_dir, fuse=True)
    yield handle
    client.destroy(handle)


def mount_hello(client: Client, handle: str, where: str = "/mnt/f") -> None:
    status, _, err = client.run(
        handle, f"mkdir -p {where} && /probe/fuse_hello {where}", privileged=True
    )
    assert status == 0, err


def servers(where: str) -> list[int]:
    """Host pids of FUSE servers serving *where*."""
    wanted = f"/probe/fuse_hello\0{where}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == wanted:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_privileged_job_mounts_a_fuse_filesystem(client: Client, fuse_container: str) -> None:
    status, out, err = client.run(fuse_container, "stat -c '%t:%T %a' /dev/fuse")
    assert (status, out) == (0, "a:e5 666\n"), err
    mount_hello(client, fuse_container)
    status, out, err = client.run(
        fuse_container, "cat /mnt/f/hello && grep ' /mnt/f ' /proc/mounts", privileged=True
    )
    assert status == 0, err
    content, mount = out.split("\n", 1)
    assert content + "\n" == CONTENT
    assert mount.split()[:3] == ["hello", "/mnt/f", "fuse.hello"]
    # Another job sees it: the mount is the container's, not the job's.
    status, out, _ = client.run(fuse_container, "cat /mnt/f/hello", privileged=True)
    assert (status, out) == (0, CONTENT)


def test_only_privileged_jobs_mount(client: Client, fuse_container: str) -> None:
    for privileged, caps in ((True, PRIVILEGED_CAPS | 1 << CAP_SYS_ADMIN), (False, 0)):
        _, out, _ = client.run(
            fuse_container, "grep ^CapEff /proc/self/status", privileged=privileged
        )
        assert int(out.split()[1], 16) == caps
    status, _, err = client.run(fuse_container, "mkdir -p /tmp/f && /probe/fuse_hello /tmp/f")
    assert status == 1
    assert err == "mount: Operation not permitted\n"


def test_without_fuse_there_is_neither_the_device_nor_mounting(
    client: Client, server_dir: Path
) -> None:
    handle = create(client, server_dir)
    try:
        status, _, _ = client.run(handle, "test -e /dev/fuse")
        assert status == 1
        status, _, err = client.run(handle, "mount -t tmpfs none /mnt", privileged=True)
        assert status != 0
        assert "permission denied" in err  # busybox's words for EPERM
    finally:
        client.destroy(handle)


def test_what_the_set_up_mounted_stays_locked(
    client: Client, server_dir: Path, tmp_path: Path
) -> None:
    """CAP_SYS_ADMIN in the container's own mount namespace: the set-up's mounts came
    into it locked, so a read-only bind or a masked file stays as it is."""
    shared = tmp_path / "shared"
    shared.mkdir()
    handle = create(
        client,
        server_dir,
        fuse=True,
        bind_mounts=[[str(server_dir), "/probe"], [str(shared), "/ro"]],
    )
    try:
        assert client.run(handle, "mkdir -p /mnt/p /mnt/t", privileged=True)[0] == 0
        for script, refusal in (
            ("mount -o remount,bind,rw /ro", "permission denied"),  # busybox's EPERM
            ("umount /ro", "Invalid argument"),  # EINVAL: locked
            ("umount /proc/keys", "Invalid argument"),  # the /dev/null masking it
            ("umount -l /sys", "Invalid argument"),
            ("mount -t proc proc /mnt/p", "permission denied"),  # its pid ns: the host userns's
            ("touch /ro/x", "Read-only file system"),
        ):
            status, _, err = client.run(handle, script, privileged=True)
            assert status != 0 and refusal in err, (script, err)
        # What it mounts itself is its own.
        status, out, err = client.run(
            handle,
            "mount -t tmpfs t /mnt/t && touch /mnt/t/x && umount /mnt/t && echo ok",
            privileged=True,
        )
        assert (status, out) == (0, "ok\n"), err
        assert list(shared.iterdir()) == []
    finally:
        client.destroy(handle)


def test_the_daemon_sees_the_container_as_set_up(
    client: Client, fuse_container: str, tmp_path: Path
) -> None:
    """The daemon reaches the container's files through its init's root, in the mount
    namespace as set up: not through the jobs' mounts, whose FUSE server (the
    container's) could keep it waiting."""
    mount_hello(client, fuse_container)
    with pytest.raises(errors.InvalidRequest, match="/mnt/f/hello: No such file"):
        client.call("copy", fuse_container, "out", "/mnt/f/hello", str(tmp_path / "out"))
    (tmp_path / "in").write_text("under the mount\n")
    client.call("copy", fuse_container, "in", str(tmp_path / "in"), "/mnt/f/in")
    script = "umount /mnt/f && cat /mnt/f/in"
    status, out, err = client.run(fuse_container, script, privileged=True)
    assert (status, out) == (0, "under the mount\n"), err


def test_the_init_does_not_wait_on_a_stopped_fuse_server(
    client: Client, fuse_container: str
) -> None:
    """A job whose program lies on a FUSE mount whose server does not answer: the init
    takes it as started after a while, and serves the container's other jobs."""
    mount_hello(client, fuse_container)
    status, _, err = client.run(fuse_container, "kill -STOP $(pidof fuse_hello)", privileged=True)
    assert status == 0, err
    stuck = client.spawn(fuse_container, "", argv=["/mnt/f/hello"], privileged=True)
    # Its program is no executable (0444): it runs on only while its exec waits.
    assert stuck in client.info(fuse_container)["job_ids"]
    assert client.run(fuse_container, "echo served")[:2] == [0, "served\n"]
    client.signal(fuse_container, stuck, "KILL")
    assert client.call("link", fuse_container, stuck)[0] == 128 + 9


def test_destroy_takes_the_mount_and_its_server(
    client: Client, daemon: Daemon, server_dir: Path
) -> None:
    handle = create(client, server_dir, fuse=True)
    where = f"/mnt/{handle}"
    mount_hello(client, handle, where)
    assert len(servers(where)) == 1
    client.destroy(handle)
    assert servers(where) == []
    assert leftovers(daemon) == NOTHING_LEFT


def test_a_restart_keeps_the_mount(fresh_daemon: Daemon, server_dir: Path) -> None:
    with fresh_daemon.client() as client:
        handle = create(client, server_dir, fuse=True)
        mount_hello(client, handle)
    fresh_daemon.kill9()
    fresh_daemon.start()
    with fresh_daemon.client() as client:
        assert client.run(handle, "cat /mnt/f/hello", privileged=True)[:2] == [0, CONTENT]
        client.destroy(handle)


def test_with_the_hosts_ids_too(client: Client, server_dir: Path) -> None:
    """Garden's privileged containers have the host's ids: CAP_SYS_ADMIN is still the
    container's user namespace's."""
    handle = create(client, server_dir, fuse=True, userns=False)
    try:
        mount_hello(client, handle)
        status, out, err = client.run(handle, "cat /mnt/f/hello", privileged=True)
        assert (status, out) == (0, CONTENT), err
        status, _, err = client.run(handle, "mount -o remount,rw /sys", privileged=True)
        assert status != 0 and "permission denied" in err
    finally:
        client.destroy(handle)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_a_bad_fuse_option_is_refused(client: Client, value: object) -> None:
    with pytest.raises(errors.InvalidRequest, match="fuse"):
        client.create({"fuse": value})
