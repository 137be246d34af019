"""``corral contain``: one program in a chroot directory, through a real daemon (the CLI
as a subprocess)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.oneshot import corral, daemon_subnet, make_chroot, readline, run, start, wait_gone
from tests.conftest import NOTHING_LEFT, REPO, Daemon, leftovers
from tests.net.conftest import devices, net_leftovers

MB = 1 << 20


@pytest.fixture
def chroot(artifacts: tuple[Path, Path], tmp_path: Path) -> Path:
    return make_chroot(artifacts, tmp_path / "chroot")


@pytest.mark.parametrize("status", [0, 3])
def test_the_exit_code_and_output_pass_through(daemon: Daemon, chroot: Path, status: int) -> None:
    done = run(
        daemon,
        "contain",
        "-chroot",
        str(chroot),
        "--",
        "/bin/sh",
        "-c",
        f'echo "out $0 $1"; echo err >&2; exit {status}',
        "a b",  # an argv: no shell splits it
    )
    assert (done.returncode, done.stdout, done.stderr) == (status, "out a b \n", "err\n")
    assert wait_gone(daemon) == []


def test_stdin_passes_through_with_its_eof(daemon: Daemon, chroot: Path) -> None:
    done = run(
        daemon, "contain", "--chroot", str(chroot), "--", "/bin/cat", input="line 1\nline 2\n"
    )
    assert (done.returncode, done.stdout) == (0, "line 1\nline 2\n")


def test_the_program_runs_as_root_of_dir_and_writes_land_in_it(
    daemon: Daemon, chroot: Path
) -> None:
    (chroot / "marker").write_text("from the host\n")
    script = "id -u; cat /marker; echo written > /root/new; grep CapEff /proc/self/status"
    done = run(daemon, "contain", "-chroot", str(chroot), "--", "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    uid, marker, caps = done.stdout.splitlines()
    assert (uid, marker) == ("0", "from the host")
    assert int(caps.split()[1], 16) != 0  # the privileged set
    assert (chroot / "root" / "new").read_text() == "written\n"


def test_overlay_keeps_dir_untouched(daemon: Daemon, chroot: Path) -> None:
    before = sorted(str(p.relative_to(chroot)) for p in chroot.rglob("*"))
    script = "echo written > /root/new && cat /root/new && rm /bin/ls && echo removed"
    done = run(
        daemon, "contain", "-chroot", str(chroot), "--overlay", "--", "/bin/sh", "-c", script
    )
    assert (done.returncode, done.stdout) == (0, "written\nremoved\n"), done.stderr
    assert sorted(str(p.relative_to(chroot)) for p in chroot.rglob("*")) == before


def test_user_runs_unprivileged(daemon: Daemon, chroot: Path) -> None:
    done = run(
        daemon,
        "contain",
        "-chroot",
        str(chroot),
        "--user",
        "1234:567",
        "--",
        "/bin/sh",
        "-c",
        "id; grep CapEff /proc/self/status",
    )
    assert done.returncode == 0, done.stderr
    ids, caps = done.stdout.splitlines()
    assert ids == "uid=1234 gid=567 groups=567" or ids.startswith("uid=1234 gid=567")
    assert int(caps.split()[1], 16) == 0


def test_without_an_address_there_is_only_loopback(daemon: Daemon, chroot: Path) -> None:
    script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo ping-ok"
    done = run(daemon, "contain", "-chroot", str(chroot), "--", "/bin/sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, "lo\nping-ok\n"), done.stderr


def test_memory_limit_ends_the_program_with_137_and_says_why(daemon: Daemon, chroot: Path) -> None:
    script = "a=x; while true; do a=$a$a; done"  # doubles a string until the limit
    done = run(
        daemon,
        "contain",
        "-chroot",
        str(chroot),
        "--memory-limit",
        "16MB",
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    assert done.returncode == 137
    assert f"exceeded the memory limit of {16 * MB} bytes" in done.stderr
    assert wait_gone(daemon) == []


def test_cpu_core_ids_pin_the_program(daemon: Daemon, chroot: Path) -> None:
    done = run(
        daemon,
        "contain",
        "-chroot",
        str(chroot),
        "--cpu-core-ids",
        "0",
        "--",
        "/bin/sh",
        "-c",
        "grep Cpus_allowed_list /proc/self/status",
    )
    assert (done.returncode, done.stdout.split()) == (0, ["Cpus_allowed_list:", "0"])


def test_sigint_ends_the_program_with_130_and_the_container(daemon: Daemon, chroot: Path) -> None:
    contain = start(
        daemon, "contain", "-chroot", str(chroot), "--", "/bin/sh", "-c", "echo up; exec sleep 60"
    )
    assert readline(contain) == "up\n"
    contain.send_signal(signal.SIGINT)
    assert contain.wait(20) == 130
    assert wait_gone(daemon) == []


def test_other_signals_are_forwarded(daemon: Daemon, chroot: Path) -> None:
    script = "trap 'echo got USR1' USR1; echo up; while true; do sleep 0.1; done"
    contain = start(daemon, "contain", "-chroot", str(chroot), "--", "/bin/sh", "-c", script)
    assert readline(contain) == "up\n"
    contain.send_signal(signal.SIGUSR1)
    assert readline(contain) == "got USR1\n"
    contain.send_signal(signal.SIGTERM)
    assert contain.wait(20) == 128 + signal.SIGTERM
    assert wait_gone(daemon) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_container_goes_when_contain_is_killed(
    daemon: Daemon, chroot: Path, sig: signal.Signals
) -> None:
    # It ignores TERM: only contain's end can take the container away.
    script = "trap '' TERM; echo up; exec sleep 60"
    contain = start(daemon, "contain", "-chroot", str(chroot), "--", "/bin/sh", "-c", script)
    assert readline(contain) == "up\n"
    with daemon.client() as client:
        assert len(client.list()) == 1
    contain.send_signal(sig)
    if sig == signal.SIGTERM:  # forwarded, and ignored: contain runs on until killed
        time.sleep(0.5)
        assert contain.poll() is None
        contain.kill()
    contain.wait(20)
    assert wait_gone(daemon) == []
    assert leftovers(daemon) == NOTHING_LEFT


def test_errors_are_one_line(daemon: Daemon, tmp_path: Path) -> None:
    done = run(daemon, "contain", "-chroot", str(tmp_path / "none"), "--", "/bin/true")
    assert (done.returncode, done.stderr) == (
        1,
        f"corral: contain: -chroot {tmp_path}/none: no such directory\n",
    )
    done = run(daemon, "contain", "-chroot", "/", "--", "/bin/true")
    assert done.returncode == 1
    assert "would let the container write the host's root" in done.stderr
    assert done.stderr.count("\n") == 1


def test_two_contains_on_one_subnet_ping_each_other(
    daemon: Daemon, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    subnet = daemon_subnet(daemon)
    first, second = str(subnet[17]), str(subnet[18])
    bridges = f"{daemon.net['interface_prefix']}b"
    roots = [make_chroot(artifacts, tmp_path / name) for name in ("a", "b")]
    # Each waits on its stdin between steps, so both are up while the other pings.
    a = start(
        daemon,
        "contain",
        "-chroot",
        str(roots[0]),
        "--network-address",
        f"{first}/24",
        "--",
        "/bin/sh",
        "-c",
        f"echo up; read go; ping -c 2 -W 3 {second}",
    )
    assert readline(a) == "up\n"
    b = start(
        daemon,
        "contain",
        "-chroot",
        str(roots[1]),
        "--network-address",
        f"{second}/24",
        "--",
        "/bin/sh",
        "-c",
        f"ping -c 2 -W 3 {first} && echo pinged; read done",
    )
    try:
        assert devices(bridges) != []  # made on demand, with no config edit
        lines = [readline(b)]
        while lines[-1] != "pinged\n" and len(lines) < 12:
            lines.append(readline(b))
        assert "2 packets transmitted, 2 packets received, 0% packet loss\n" in lines
        out, err = a.communicate("go\n", timeout=20)
        assert a.returncode == 0, out + err
        assert "2 packets received" in out
        b.communicate("done\n", timeout=20)
        assert b.returncode == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert wait_gone(daemon) == []
    assert devices(bridges) == []  # gone after the last
    assert net_leftovers(daemon)["rules"] == []
    assert leftovers(daemon) == NOTHING_LEFT


def test_a_terminal_gets_a_terminal(daemon: Daemon, chroot: Path) -> None:
    master, slave = os.openpty()
    contain = subprocess.Popen(
        corral(
            daemon,
            "contain",
            "-chroot",
            str(chroot),
            "--",
            "/bin/sh",
            "-c",
            "tty; read x; echo got $x; exit 5",
        ),
        cwd=REPO,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"/dev/pts/" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 1024)
        os.write(master, b"hello\r")
        while contain.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 1024)
                except OSError:
                    break
        assert contain.wait(20) == 5
    finally:
        if contain.poll() is None:
            contain.kill()
        os.close(master)
    assert b"/dev/pts/0" in seen and b"got hello" in seen
    assert wait_gone(daemon) == []
