"""``ps``, ``top``, ``logs``, ``inspect``, ``stats``, ``cp``, ``limit``, ``port``, ``net``,
``stop``, ``kill``, ``rm``, ``pause``, ``unpause`` as subprocesses, against what the
daemon and the kernel then say."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from supervisor.client import Client
from tests.cli.conftest import command, corral, gone, no_traceback, ok
from tests.conftest import REPO, Daemon, cgroup_of, wait_until


def test_logs_top_inspect_stats(daemon: Daemon, client: Client, name: str) -> None:
    script = "echo one; echo two >&2; echo ready; sleep 100"
    ok(daemon, "run", "-d", "--name", name, "--", "sh", "-c", script)
    wait_until(lambda: "ready" in corral(daemon, "logs", name).stdout, what="the job's output")
    # Without -f: what is there now, though the job runs on.
    done = corral(daemon, "logs", name)
    assert (done.returncode, done.stdout, done.stderr) == (0, "one\nready\n", "two\n")
    chunks = [json.loads(line) for line in ok(daemon, "logs", "--json", name).splitlines()]
    assert {"stream": "stderr", "data": "two\n"} in chunks
    follower = subprocess.Popen(
        command(daemon, "logs", "-f", name), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None and follower.stdout.readline() == "one\n"
        assert follower.poll() is None  # -f goes on while the job runs

        top = ok(daemon, "top", name).splitlines()
        assert top[0].split()[:3] == ["PID", "PPID", "USER"]
        assert any(line.endswith("sleep 100") for line in top[1:]), top
        assert not any("ps -o" in line for line in top)
        processes = json.loads(ok(daemon, "top", "--json", name))["processes"]
        assert "sleep 100" in [p["COMMAND"] for p in processes]

        inspected = json.loads(ok(daemon, "inspect", name))
        assert inspected["handle"] == name and inspected["state"] == "active"
        assert inspected["job_ids"] == [1]

        figures = json.loads(
            ok(daemon, "stats", "--no-stream", "--json", "--interval", "0.2", name)
        )
        assert [f["handle"] for f in figures] == [name]
        assert figures[0]["pids"] == 2 and figures[0]["memory_usage"] > 0
        table = ok(daemon, "stats", "--no-stream", "--interval", "0.2", name).splitlines()
        assert table[0].split()[:3] == ["HANDLE", "CPU", "%"] and table[1].startswith(name)

        assert ok(daemon, "kill", "-s", "TERM", name) == f"{name}\n"
        assert follower.wait(timeout=20) == 0
        assert follower.stdout.read() == "ready\n"
    finally:
        follower.kill()
        follower.wait()
    assert client.info(name)["job_ids"] == []
    assert ok(daemon, "ps", "-q", "--filter", "state=exited").split() == [name]


def test_stats_refreshes_live(daemon: Daemon, name: str) -> None:
    ok(daemon, "create", "--name", name)
    live = subprocess.Popen(
        command(daemon, "stats", "--interval", "0.1", name), cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert live.stdout is not None
        seen = b""
        while seen.count(b"\033[H\033[J") < 3:  # three screens drawn
            seen += os.read(live.stdout.fileno(), 4096)
        assert live.poll() is None
    finally:
        live.kill()
        live.wait()
    assert name.encode() in seen


def test_cp_both_ways(daemon: Daemon, client: Client, name: str, tmp_path: Path) -> None:
    ok(daemon, "create", "--name", name)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    assert ok(daemon, "cp", str(src), f"{name}:/tmp") == ""
    assert client.run(name, "cat /tmp/in/a.txt; echo beta > /tmp/b.txt")[:2] == [0, "alpha\n"]
    ok(daemon, "cp", f"{name}:/tmp/b.txt", str(tmp_path / "b.txt"))
    assert (tmp_path / "b.txt").read_text() == "beta\n"
    report = json.loads(ok(daemon, "cp", "--json", f"{name}:/tmp/in/", str(tmp_path / "back")))
    assert report["direction"] == "out"
    assert (tmp_path / "back" / "a.txt").read_text() == "alpha\n"
    line = no_traceback(corral(daemon, "cp", str(src), str(tmp_path / "x")))
    assert "between a container and the host" in line
    line = no_traceback(corral(daemon, "cp", f"{name}:/nothing/here", str(tmp_path / "y")))
    assert "/nothing/here" in line


def test_limit_reads_and_sets_in_the_kernel(daemon: Daemon, client: Client, name: str) -> None:
    ok(daemon, "create", "--name", name, "-m", "64m")
    assert ok(daemon, "limit", name, "mem") == "64m\n"
    assert ok(daemon, "limit", name, "mem", "128m") == "128m\n"
    memory = cgroup_of(daemon, name, "memory")
    files = [memory / "memory.limit_in_bytes", memory / "memory.max"]
    written = next(f for f in files if f.exists()).read_text().strip()
    assert int(written) == 128 << 20
    assert ok(daemon, "limit", name, "pids", "40") == "40\n"
    assert client.info(name)["limits"]["pids"] == 40
    assert json.loads(ok(daemon, "limit", "--json", name, "cpus", "0.25"))["value"] == 0.25
    line = no_traceback(corral(daemon, "limit", name, "mem", "lots"))
    assert "is not a size" in line


def test_port_and_net(daemon: Daemon, client: Client, name: str) -> None:
    ok(daemon, "create", "--name", name)
    first = daemon.net["port_range"][0]
    assert ok(daemon, "port", name, f"{first}:8080") == f"8080/tcp -> 0.0.0.0:{first}\n"
    assert ok(daemon, "port", name) == f"8080/tcp -> 0.0.0.0:{first}\n"
    assert json.loads(ok(daemon, "port", "--json", name))[0]["host_port"] == first
    added = ok(daemon, "net", "in", name, ":9090").strip()
    assert added.startswith("9090/tcp -> 0.0.0.0:")
    assert ok(daemon, "port", name, "--revoke", str(first)) == ""
    assert [f["container_port"] for f in client.info(name)["net_in"]] == [9090]
    assert (
        ok(daemon, "net", "out", name, "192.0.2.1:53", "--protocol", "udp")
        == "allowed 192.0.2.1:53\n"
    )
    assert client.info(name)["net_out"] == [{"destination": "192.0.2.1/32:53", "protocol": "udp"}]
    ok(daemon, "net", "out", name, "192.0.2.1:53", "--protocol", "udp", "--revoke")
    assert client.info(name)["net_out"] == []


def test_stop_pause_unpause_rm(daemon: Daemon, client: Client, name: str) -> None:
    other = name + "-2"
    try:
        ok(daemon, "create", "--name", name)
        ok(daemon, "create", "--name", other)
        job = client.spawn(name, "trap '' TERM; sleep 100")
        assert ok(daemon, "pause", name, other) == f"{name}\n{other}\n"
        assert {client.info(h)["state"] for h in (name, other)} == {"paused"}
        assert ok(daemon, "unpause", name) == f"{name}\n"
        ok(daemon, "resume", other)
        assert {client.info(h)["state"] for h in (name, other)} == {"active"}
        done = corral(daemon, "rm", name, other)
        assert done.returncode == 1 and "stop it first, or rm -f" in done.stderr
        assert client.list().count(name) == 1
        # -t 0: no wait for the job that ignores TERM.
        assert ok(daemon, "stop", "-t", "0", name) == f"{name}\n"
        assert client.info(name)["state"] == "stopped"
        assert client.link(name, job)[0] == 137
        ok(daemon, "rm", name)
        assert ok(daemon, "rm", "-f", "--json", other) == f'["{other}"]\n'
        assert gone(client, name) and gone(client, other)
        line = no_traceback(corral(daemon, "rm", name))
        assert line.startswith(f"corral: {name}: ") and "unknown" in line
    finally:
        for handle in (other,):
            if handle in client.list():
                client.destroy(handle)


def test_events_still_work(daemon: Daemon, client: Client, name: str) -> None:
    watcher = subprocess.Popen(
        command(daemon, "events", "--json", "--kind", "state"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # subscribed by now (its first line, "watching", is not printed)
        ok(daemon, "create", "--name", name)
        assert watcher.stdout is not None
        event = json.loads(watcher.stdout.readline())
        assert (event["handle"], event["new"]) == (name, "active")
    finally:
        watcher.kill()
        watcher.wait()
