"""Black-box tests of containers through the real daemon socket."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from supervisor import errors
from supervisor.client import Client
from tests.conftest import Daemon, ended, init_pid, wait_for_output, wait_until


def test_isolated_identity(client: Client, container: str) -> None:
    status, out, err = client.run(
        container, "echo $$; hostname; id -u; ls /proc | grep -c '^[0-9]'"
    )
    pid, hostname, uid, nprocs = out.split()
    assert status == 0, err
    assert int(pid) < 10  # its own pid namespace: the init is 1, the job a low pid
    assert hostname == container
    assert uid == "10000"  # the unprivileged `corral` account
    assert int(nprocs) <= 4  # init, the shell, grep, ls: no host process


def test_privileged_runs_as_root_without_mount_rights(client: Client, container: str) -> None:
    status, out, _ = client.run(container, "id -u", privileged=True)
    assert (status, out.strip()) == (0, "0")
    status, _, err = client.run(
        container, "mkdir -p /mnt/x && mount -t tmpfs x /mnt/x", privileged=True
    )
    assert status != 0, "a privileged job must not be able to mount"


def test_host_wide_kernel_settings_are_read_only(client: Client, container: str) -> None:
    script = "echo core > /proc/sys/kernel/core_pattern && echo WRITABLE"
    status, out, err = client.run(container, script, privileged=True)
    assert status != 0 and "WRITABLE" not in out
    assert "Read-only file system" in err


def test_unprivileged_has_no_capabilities(client: Client, container: str) -> None:
    _, out, _ = client.run(container, "grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status")
    assert all(line.split()[1] == "0000000000000000" for line in out.splitlines()), out


def test_jobs_get_none_of_the_inits_signal_settings(client: Client, container: str) -> None:
    """The init ignores TERM, INT, HUP and PIPE and blocks CHLD; a job none of them.
    (The job's shell may ignore others itself: busybox sh ignores QUIT.)"""
    init_ignored = sum(1 << (sig - 1) for sig in (15, 2, 1, 13))
    for privileged in (False, True):
        status, out, _ = client.run(
            container, "grep -E '^Sig(Ign|Blk)' /proc/self/status", privileged=privileged
        )
        assert status == 0
        fields = dict(line.split() for line in out.splitlines())
        assert fields["SigBlk:"] == "0" * 16
        assert int(fields["SigIgn:"], 16) & init_ignored == 0, fields


def test_host_invisible(client: Client, container: str) -> None:
    # processes: only the container's own are in /proc
    _, out, _ = client.run(container, "cat /proc/[0-9]*/comm")
    assert "corrald" not in out and "python" not in out
    assert "corral-init" in out or "init" in out
    # network: loopback (up) and at most the container's own eth0, never a host device
    _, out, _ = client.run(container, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert set(out.split()) in ({"lo"}, {"lo", "eth0"})
    assert not (set(os.listdir("/sys/class/net")) - {"lo", "eth0"}) & set(out.split())
    _, out, _ = client.run(container, "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags")
    assert int(out.split()[-1], 16) & 1  # IFF_UP
    # mounts: the container's mounts are not the host's, and the host's are not the container's
    _, out, _ = client.run(container, "cat /proc/self/mountinfo")
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert container not in host_mounts
    inside = {line.split()[4] for line in out.splitlines()}
    host_only = {line.split()[4] for line in host_mounts.splitlines()} - {
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/tmp",
    }
    assert host_only and not inside & host_only


def test_root_is_a_private_overlay(client: Client, daemon: Daemon) -> None:
    a, b = client.create(), client.create()
    try:
        assert client.run(a, "echo from-a > /tmp/file; cat /tmp/file")[1] == "from-a\n"
        assert client.run(b, "cat /tmp/file")[0] != 0  # b does not see a's writes
        _, out, _ = client.run(a, "grep ' / / ' /proc/self/mountinfo")
        assert "overlay" in out
        _, out, _ = client.run(
            a, "stat -c %a /tmp; ls /dev; test -w /sys/kernel && echo w || echo ro"
        )
        mode, *devices, sysfs = out.split()
        assert mode == "1777"
        assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"} <= set(
            devices
        )
        assert sysfs == "ro"
    finally:
        client.destroy(a)
        client.destroy(b)


def test_spawn_then_link_on_another_connection(daemon: Daemon) -> None:
    with daemon.client() as first:
        handle = first.create({"grace_time": 30})
        job = first.spawn(handle, "sleep 0.5; echo out; echo err >&2; exit 7")
    with daemon.client() as second:
        assert second.link(handle, job) == [7, "out\n", "err\n"]
        with pytest.raises(errors.UnknownJob):
            second.link(handle, job)
        second.destroy(handle)


def test_two_links_both_get_the_result(daemon: Daemon, container: str) -> None:
    with daemon.client() as a, daemon.client() as b, daemon.client() as c:
        job = a.spawn(container, "sleep 0.5; echo done")
        import threading

        results: list[object] = []
        waiter = threading.Thread(target=lambda: results.append(b.link(container, job)))
        waiter.start()
        results.append(c.link(container, job))
        waiter.join()
        assert results == [[0, "done\n", ""], [0, "done\n", ""]]


def test_stream_delivers_output_while_running(
    client: Client, container: str, daemon: Daemon
) -> None:
    job = client.spawn(container, "echo first; sleep 1.5; echo second >&2")
    started = time.monotonic()
    seen = []
    with daemon.client() as streamer:
        for name, chunk in streamer.stream(container, job):
            seen.append((name, chunk, time.monotonic() - started))
    assert [(n, c) for n, c, _ in seen] == [("stdout", "first\n"), ("stderr", "second\n")]
    assert seen[0][2] < seen[1][2]  # the first chunk came before the job wrote the second
    assert client.link(container, job) == [0, "first\n", "second\n"]


def test_output_bytes_survive_base64(client: Client, container: str) -> None:
    status, out, _ = client.run(container, r"printf '\377\000\001abc'", encoding="base64")
    assert base64.b64decode(out) == b"\xff\x00\x01abc"
    status, out, _ = client.run(container, r"printf '\377abc'")
    assert out.encode("utf-8", "surrogateescape") == b"\xffabc"


def test_job_options(client: Client, container: str) -> None:
    status, out, _ = client.run(
        container,
        "pwd; echo $FOO; id -un; ulimit -n",
        dir="/tmp",
        env={"FOO": "bar"},
        rlimits={"nofile": 123},
        user="nobody",
    )
    assert (status, out.split()) == (0, ["/tmp", "bar", "nobody", "123"])
    with pytest.raises(errors.InvalidRequest, match="nosuchuser"):
        client.run(container, "true", user="nosuchuser")
    with pytest.raises(errors.InvalidRequest, match="/nope"):
        client.run(container, "true", dir="/nope")


def test_container_env_and_properties(client: Client) -> None:
    handle = client.create({"env": {"GREETING": "hi"}, "properties": {"owner": "tests", "k": "v"}})
    try:
        assert client.run(handle, "echo $GREETING")[1] == "hi\n"
        assert client.info(handle)["properties"] == {"owner": "tests", "k": "v"}
        assert handle in client.list({"owner": "tests"})
        assert handle not in client.list({"owner": "other"})
    finally:
        client.destroy(handle)


def test_discarded_output(client: Client, container: str) -> None:
    assert client.run(container, "echo lost; exit 3", discard_output=True) == [3, None, None]


def test_output_cap_kills_the_job(artifacts: tuple[Path, Path]) -> None:
    d = Daemon(*artifacts, {"containers": {"output_limit": 100000}}).start()
    try:
        with d.client() as c:
            handle = c.create()
            status, out, _, report = c.run(handle, "yes", ended=True)
            assert status == 128 + 9
            assert len(out) == 100000
            assert report["ended"] == {"exit_code": None, "signal": 9, "killed_by": "output_limit"}
            assert "command exceeded maximum output" in c.info(handle)["events"]
    finally:
        d.close()


def test_custom_handle(client: Client) -> None:
    handle = client.create({"handle": "my-box.1"})
    try:
        assert handle == "my-box.1"
        with pytest.raises(errors.InvalidRequest, match="already taken"):
            client.create({"handle": "my-box.1"})
        assert client.run(handle, "hostname")[1] == "my-box.1\n"
    finally:
        client.destroy(handle)
    with pytest.raises(errors.InvalidRequest, match="handle"):
        client.create({"handle": "../escape"})


def test_stop_and_states(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    job = client.spawn(handle, "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done")
    wait_for_output(daemon, handle, job)
    assert client.stop(handle) == "ok"
    info = client.info(handle)
    assert info["state"] == "stopped"
    assert client.link(handle, job)[0] == 42  # TERM reached the job, which exited by itself
    with pytest.raises(errors.InvalidState, match="stopped"):
        client.spawn(handle, "true")
    assert client.destroy(handle) == "ok"
    with pytest.raises(errors.UnknownHandle):
        client.destroy(handle)
    with pytest.raises(errors.UnknownHandle):
        client.info(handle)


def test_a_stopped_container_starts_again_with_its_files_and_network(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create()
    try:
        assert client.run(handle, "echo kept > /tmp/note")[0] == 0
        address = client.info(handle)["container_ip"]
        client.spawn(handle, "sleep 100")
        client.stop(handle, kill=True)
        with pytest.raises(errors.InvalidState, match=f"{handle}: cannot resume while stopped"):
            client.call("resume", handle)
        assert client.call("start", handle) == "ok"
        info = client.info(handle)
        assert (info["state"], info["container_ip"]) == ("active", address)
        # the files are there; the jobs of before are not started again
        assert client.run(handle, "cat /tmp/note; ps -o comm | grep -x sleep || echo none") == [
            0,
            "kept\nnone\n",
            "",
        ]
        with pytest.raises(errors.InvalidState, match=f"{handle}: cannot start while active"):
            client.call("start", handle)
    finally:
        client.destroy(handle)


def test_stop_kills_after_timeout_and_orphans_too(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    job = client.spawn(handle, "trap '' TERM; (trap '' TERM; echo ready; sleep 1000) & sleep 1000")
    wait_for_output(daemon, handle, job)
    started = time.monotonic()
    client.stop(handle)  # stop_timeout is 2 s in the tests' config
    assert time.monotonic() - started >= 1.5
    assert client.link(handle, job)[0] == 137
    client.destroy(handle)


def test_stop_with_kill_is_immediate(daemon: Daemon, client: Client) -> None:
    handle = client.create()
    job = client.spawn(handle, "trap '' TERM; echo ready; sleep 1000")
    wait_for_output(daemon, handle, job)
    client.stop(handle, kill=True)
    assert client.link(handle, job)[0] == 137
    client.destroy(handle)


def test_destroy_releases_everything(client: Client, daemon: Daemon) -> None:
    handle = client.create()
    pid = init_pid(daemon, handle)
    client.spawn(handle, "sleep 1000")
    client.destroy(handle)
    assert ended(pid)
    assert not (daemon.depot / handle).exists()
    assert handle not in Path("/proc/self/mountinfo").read_text()


def test_a_spare_directory_brings_nothing_of_the_container_before(fresh_daemon: Daemon) -> None:
    """Destroyed containers' directories are emptied and reused by later creates."""
    daemon = fresh_daemon
    client = daemon.client()
    first = client.create()
    assert client.run(first, "echo secret > /tmp/secret; echo out")[0] == 0
    client.destroy(first)
    spare = daemon.depot / ".spare"
    deadline = time.monotonic() + 5
    while not any(spare.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    (made,) = spare.iterdir()
    # Its record slot (emptied), jobs/ and the fs plugin's directories, new and empty.
    assert sorted(p.name for p in made.iterdir()) == ["jobs", "record.1", "rootfs", "upper", "work"]
    assert not any(p for d in ("jobs", "rootfs", "upper", "work") for p in (made / d).iterdir())
    second = client.create()
    try:
        assert not any(spare.iterdir())  # it was used
        assert client.run(second, "cat /tmp/secret")[0] != 0  # its job 1
        assert client.spawn(second, "sleep 5") == 2  # its own job ids
        assert sorted(p.name for p in (daemon.depot / second / "jobs").iterdir()) == ["2"]
    finally:
        client.destroy(second)
        client.close()


def test_info_payload(client: Client, container: str) -> None:
    client.spawn(container, "sleep 5")
    info = client.info(container)
    assert info["state"] == "active"
    assert info["job_ids"] == [1]
    assert os.path.isdir(info["container_path"])
    assert set(info) >= {
        "state",
        "events",
        "host_ip",
        "container_ip",
        "container_path",
        "job_ids",
        "properties",
        "limits",
    }


def test_trio_client(daemon: Daemon) -> None:
    import trio

    from supervisor.client import TrioClient

    async def main() -> list[object]:
        async with await TrioClient.connect(daemon.socket) as c:
            handle = await c.create()
            job = await c.spawn(handle, "echo a; echo b >&2")
            chunks = [item async for item in c.stream(handle, job)]
            result = await c.run(handle, "exit 9")
            await c.destroy(handle)
            return [sorted(chunks), result]

    assert trio.run(main) == [[("stderr", "b\n"), ("stdout", "a\n")], [9, "", ""]]


def test_link_run_and_stream_carry_the_containers_info_when_asked(client: Client) -> None:
    handle = client.create({"properties": {"app": "x"}})
    try:
        status, out, err, info = client.run(handle, "echo hi", info=True)
        assert (status, out, err) == (0, "hi\n", "")
        assert info["state"] == "active" and info["properties"] == {"app": "x"}
        assert "memory_stat" in info and "container_ip" in info
        job = client.spawn(handle, "echo there")
        assert client.link(handle, job)[:3] == [0, "there\n", ""]
        assert len(client.run(handle, "true")) == 3  # not asked: Corral's reply as before
        job = client.spawn(handle, "echo streamed")
        client.sock.sendall(json.dumps(["stream", handle, job, {"info": True}]).encode() + b"\n")
        lines = [json.loads(client._line()) for _ in range(2)]
        assert lines[0] == ["stdout", "streamed\n"]
        assert lines[1]["payload"]["info"]["state"] == "active"
    finally:
        client.destroy(handle)


def test_job_ids_lists_the_jobs_still_running(client: Client) -> None:
    handle = client.create()
    try:
        running = client.spawn(handle, "sleep 100")
        ended = client.spawn(handle, "true")
        client.link(handle, client.spawn(handle, "true"))
        wait_until(
            lambda: client.info(handle)["job_ids"] == [running], what="the short jobs to end"
        )
        assert (
            client.link(handle, ended)[0] == 0
        )  # ended and not linked: not listed, still linkable
    finally:
        client.destroy(handle)
