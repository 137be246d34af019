"""``corral run``, ``create`` and ``exec`` as subprocesses: exit codes, signals, terminals,
and the container each one leaves (or not)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.client import Client
from tests.cli.conftest import command, corral, gone, ok
from tests.conftest import REPO, Daemon, cgroup_of, wait_until


@pytest.mark.parametrize("code", [0, 3])
def test_run_rm_passes_the_exit_code_and_leaves_nothing(
    daemon: Daemon, client: Client, name: str, code: int
) -> None:
    done = corral(
        daemon,
        "run",
        "--rm",
        "--name",
        name,
        "--",
        "sh",
        "-c",
        f"echo out; echo err >&2; exit {code}",
    )
    assert (done.returncode, done.stdout, done.stderr) == (code, "out\n", "err\n")
    assert gone(client, name)


def test_the_command_is_an_argv_not_a_shell_string(daemon: Daemon) -> None:
    done = corral(daemon, "run", "--rm", "--", "echo", "$HOME", "a  b", "'q'", ";", "ls")
    assert (done.returncode, done.stdout) == (0, "$HOME a  b 'q' ; ls\n")


def test_run_without_rm_leaves_a_stopped_container_rm_removes(
    daemon: Daemon, client: Client, name: str
) -> None:
    done = corral(daemon, "run", "--name", name, "--", "sh", "-c", "sleep 100 & echo done")
    assert (done.returncode, done.stdout) == (0, "done\n")
    info = client.info(name)
    assert info["state"] == "stopped" and info["pids"]["current"] <= 1  # only its init
    assert info["properties"]["corral.job"] == "1"
    assert name not in ok(daemon, "ps", "-q").split()  # Docker's ps: what runs
    listed = json.loads(ok(daemon, "ps", "-a", "--json"))
    assert [r["state"] for r in listed if r["handle"] == name] == ["stopped"]
    assert ok(daemon, "logs", name) == "done\n"
    assert ok(daemon, "rm", name) == f"{name}\n"
    assert gone(client, name)


def test_cli_containers_are_not_reaped_by_grace(daemon: Daemon, client: Client, name: str) -> None:
    handle = ok(daemon, "create", "--name", name).strip()
    assert handle == name
    time.sleep(0.5)  # the CLI's connection is long closed
    assert client.info(name)["state"] == "active"
    graced = ok(daemon, "create", "--grace-time", "0").strip()
    wait_until(lambda: gone(client, graced), what="a --grace-time 0 container reaped")


def test_run_options_make_the_container_and_job(
    daemon: Daemon, client: Client, name: str, tmp_path: Path
) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("from the host\n")
    rw.chmod(0o777)
    script = (
        'echo "$GREETING $(id -un) $(pwd)"; cat /mnt/ro/f; echo hi > /mnt/rw/g; '
        "{ echo x > /mnt/ro/h; } 2>/dev/null || echo read-only"
    )
    done = corral(
        daemon,
        "run", "-d", "--name", name,
        "-m", "64m", "--cpus", "0.5", "--cpuset-cpus", "0", "--pids-limit", "50",
        "--disk", "64m", "-e", "GREETING=hello", "-u", "root", "-w", "/tmp",
        "-v", f"{ro}:/mnt/ro:ro", "-v", f"{rw}:/mnt/rw", "-p", ":80",
        "-l", "team=cli", "--privileged",
        "--", "sh", "-c", script,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{name}\n", "")
    ok(daemon, "logs", "-f", name)  # waits for the job's end
    assert ok(daemon, "logs", name) == "hello root /tmp\nfrom the host\nread-only\n"
    assert (rw / "g").read_text() == "hi\n"
    info = client.info(name)
    limits = info["limits"]
    assert (limits["mem"], limits["cpus"], limits["cpuset"], limits["pids"]) == (
        64 << 20,
        0.5,
        "0",
        50,
    )
    assert limits["disk"] == 64
    assert (cgroup_of(daemon, name, "pids") / "pids.max").read_text().strip() == "50"
    assert len(info["net_in"]) == 1 and info["net_in"][0]["container_port"] == 80
    assert info["properties"]["team"] == "cli"
    # The job ended, the container runs on: Docker's exited container.
    assert ok(daemon, "ps", "-q", "--filter", "state=exited").split() == [name]
    row = json.loads(ok(daemon, "ps", "--json", "--filter", "property=team=cli"))
    assert [r["handle"] for r in row] == [name]
    table = ok(daemon, "ps", "--filter", "label=team=cli").splitlines()
    assert table[0].split()[:7] == ["HANDLE", "STATE", "ROOT", "ADDRESS", "AGE", "JOBS", "LIMITS"]
    assert table[1].split()[:6] == [name, "exited", "base", info["container_ip"], "0s", "0"] or (
        table[1].split()[4].endswith("s")
    )
    assert "mem=64m,cpus=0.5" in table[1]


def test_network_address_puts_the_container_on_the_bridge(
    daemon: Daemon, client: Client, name: str
) -> None:
    subnet = daemon.net["bridges"]["lan"]
    address = subnet.rsplit(".", 1)[0] + ".77"
    done = corral(
        daemon, "run", "--rm", "--name", name, "--network-address", f"{address}/24",
        "--", "ip", "-4", "-o", "addr", "show", "eth0",
    )  # fmt: skip
    assert done.returncode == 0 and f"{address}/24" in done.stdout, done


def test_bad_options_are_one_line(daemon: Daemon, client: Client) -> None:
    before = client.list()
    for args, says in [
        (["run", "--rm", "-m", "lots", "--", "true"], "--memory 'lots' is not a size"),
        (["run", "--rm", "-p", "x:y", "--", "true"], "-p 'x:y' is not"),
        (["run", "--rm", "-d", "--", "true"], "--rm with -d"),
        (["run", "--rm", "-u", "nobody-here", "--", "true"], "nobody-here"),
        (["create", "--config", "{x"], "--config is not JSON"),
        (["run", "--rm", "--pids-limit", "0", "--", "true"], "pids"),
    ]:
        done = corral(daemon, *args)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done
        assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done
    assert client.list() == before  # a job that could not start leaves no container


def _started(daemon: Daemon, name: str) -> None:
    """Wait for the job of container *name*, on connections of their own (a connection that
    names a container holds it against its grace timer)."""

    def running() -> bool:
        with daemon.client() as c:
            return name in c.list() and bool(c.info(name)["job_ids"])

    wait_until(running, what="the job")


@pytest.mark.parametrize(
    ("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138)]
)
def test_signals_to_the_cli_go_to_the_job(
    daemon: Daemon, client: Client, name: str, sent: signal.Signals, status: int
) -> None:
    cli = subprocess.Popen(
        command(daemon, "run", "--rm", "--name", name, "--", "sleep", "100"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _started(daemon, name)
        cli.send_signal(sent)
        assert cli.wait(timeout=20) == status
        assert cli.stderr is not None and cli.stderr.read() == b""
    finally:
        cli.kill()
        cli.wait()
    assert gone(client, name)


def test_a_trapped_signal_is_the_jobs_to_handle(daemon: Daemon, client: Client, name: str) -> None:
    cli = subprocess.Popen(
        command(
            daemon,
            "run",
            "--rm",
            "--name",
            name,
            "--",
            "sh",
            "-c",
            'trap "echo got HUP; exit 7" HUP; echo ready; while :; do sleep 0.1; done',
        ),  # fmt: skip
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stdout is not None and cli.stdout.readline() == "ready\n"
        cli.send_signal(signal.SIGHUP)
        assert cli.wait(timeout=20) == 7
        assert cli.stdout.read() == "got HUP\n"
    finally:
        cli.kill()
        cli.wait()


def test_kill_gives_137_and_stop_ends_jobs(daemon: Daemon, client: Client, name: str) -> None:
    cli = subprocess.Popen(command(daemon, "run", "--name", name, "--", "sleep", "100"), cwd=REPO)
    try:
        _started(daemon, name)
        assert ok(daemon, "kill", name) == f"{name}\n"
        assert cli.wait(timeout=20) == 137
    finally:
        cli.kill()
        cli.wait()
    assert client.info(name)["state"] == "stopped"


def test_killing_the_cli_still_removes_an_rm_container(
    daemon: Daemon, client: Client, name: str
) -> None:
    """--rm is grace time 0: the daemon destroys the container once the CLI's connections
    are closed, which it notices for the output stream at its next line, at the latest
    when the job ends."""
    cli = subprocess.Popen(
        command(daemon, "run", "--rm", "--name", name, "--", "sleep", "2"), cwd=REPO
    )
    _started(daemon, name)
    cli.kill()
    cli.wait()
    wait_until(lambda: gone(client, name), 15, what="the daemon reaping the --rm container")


def test_interactive_stdin_is_piped(daemon: Daemon, client: Client) -> None:
    done = corral(
        daemon, "run", "--rm", "-i", "--", "sh", "-c", "tr a-z A-Z; exit 5", input="hello\nworld\n"
    )
    assert (done.returncode, done.stdout) == (5, "HELLO\nWORLD\n")


def test_run_json(daemon: Daemon, client: Client) -> None:
    done = corral(daemon, "run", "--rm", "--json", "--", "sh", "-c", "echo hi; exit 4")
    assert done.returncode == 4
    report = json.loads(done.stdout)
    assert (report["status"], report["stdout"], report["ended"]["exit_code"]) == (4, "hi\n", 4)
    assert gone(client, report["handle"])


def test_tty_shell_resizes_passes_ctrl_c_and_restores_the_terminal(
    daemon: Daemon, client: Client, name: str, terminal: Any
) -> None:
    t = terminal(command(daemon, "run", "--rm", "-it", "--name", name, "--", "sh"), 30, 100)
    t.expect("$ ")
    t.write("stty size; tty\r")
    assert "30 100" in t.expect("/dev/pts/")
    t.resize(40, 120)
    time.sleep(0.3)  # the resize request goes from a thread; the shell reads the size after
    t.write("stty size\r")
    t.expect("40 120")
    t.write("sleep 100\r")
    time.sleep(0.5)
    t.write("\x03")  # Ctrl-C, typed: the container's terminal makes the SIGINT
    t.write("echo status=$?\r")
    t.expect("status=130")
    t.write("exit 3\r")
    assert t.wait() == 3
    attrs = t.attrs()
    assert attrs[3] & 0o10  # ECHO is back on: raw mode was undone
    assert gone(client, name)


def test_exec_runs_in_a_running_container(
    daemon: Daemon, client: Client, name: str, terminal: Any
) -> None:
    ok(daemon, "create", "--name", name, "-e", "WHERE=container")
    done = corral(
        daemon, "exec", "-e", "WHO=me", name, "--", "sh", "-c", 'echo "$WHO $WHERE"; exit 2'
    )
    assert (done.returncode, done.stdout) == (2, "me container\n")
    job = ok(daemon, "exec", "-d", name, "sleep", "100").strip()
    assert int(job) in client.info(name)["job_ids"]
    done = corral(daemon, "exec", "-i", name, "cat", input="piped\n")
    assert (done.returncode, done.stdout) == (0, "piped\n")
    t = terminal(command(daemon, "exec", "-it", name, "sh"))
    t.expect("$ ")
    t.write("echo $((6*7))\r")
    t.expect("42")
    t.write("exit\r")
    assert t.wait() == 0
    assert corral(daemon, "exec", name).returncode == 1


@pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse on this host")
def test_fuse_gives_the_device_and_the_right_to_mount(daemon: Daemon) -> None:
    script = "stat -c %t:%T /dev/fuse && grep ^CapEff /proc/self/status"
    out = ok(daemon, "run", "--rm", "--fuse", "--privileged", "--", "sh", "-c", script)
    device, caps = out.splitlines()
    assert device == "a:e5"
    assert int(caps.split()[1], 16) & 1 << 21  # CAP_SYS_ADMIN


def test_userns_host_gives_the_hosts_ids(daemon: Daemon) -> None:
    maps = ok(daemon, "run", "--rm", "--userns", "host", "--", "cat", "/proc/self/uid_map")
    assert maps.split() == ["0", "0", "4294967295"]
    done = corral(daemon, "run", "--rm", "--userns", "mine", "--", "true")
    assert done.returncode == 2 and "--userns" in done.stderr  # argparse's usage error
