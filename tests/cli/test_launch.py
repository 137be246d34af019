"""``corral launch DIR``: the settings-file launcher, through a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.oneshot import daemon_subnet, make_chroot, readline, run, start, wait_gone
from tests.conftest import NOTHING_LEFT, Daemon, cgroup_layout, cgroup_of, leftovers

#: The seed's settings file, as it was; arg2 prints the ids and the cgroups, then waits
#: on stdin while the test reads the container's cgroup files from the host.
SEED = """user=99
group=98
memlimit=4194304
cpupercent=5
process=/bin/sh
arg1=-c
arg2=id; cat /proc/self/cgroup; read x
"""


@pytest.fixture
def launch_dir(artifacts: tuple[Path, Path], tmp_path: Path) -> Path:
    make_chroot(artifacts, tmp_path / "chroot")
    return tmp_path


def _limits(daemon: Daemon, handle: str) -> tuple[int, float]:
    """(memory limit in bytes, CPU quota in cores) of the container, from its cgroup files."""
    layout = cgroup_layout(daemon)
    memory, cpu = cgroup_of(daemon, handle, "memory"), cgroup_of(daemon, handle, "cpu")
    if layout["memory"].version == 1:
        mem = int((memory / "memory.limit_in_bytes").read_text())
    else:
        mem = int((memory / "memory.max").read_text())
    if layout["cpu"].version == 1:
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        period = int((cpu / "cpu.cfs_period_us").read_text())
    else:
        quota_text, period_text = (cpu / "cpu.max").read_text().split()
        quota, period = int(quota_text), int(period_text)
    return mem, quota / period


def test_the_seeds_settings_run_as_that_user_with_those_limits(
    daemon: Daemon, launch_dir: Path
) -> None:
    (launch_dir / "settings").write_text(SEED)
    launch = start(daemon, "launch", str(launch_dir))
    try:
        assert readline(launch).startswith("uid=99 gid=98")
        with daemon.client() as client:
            (handle,) = client.list()
            assert _limits(daemon, handle) == (4194304, 0.05)
            assert client.info(handle)["limits"]["mem"] == 4194304
        out, err = launch.communicate("\n", timeout=20)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    assert launch.returncode == 0, err
    assert wait_gone(daemon) == []
    assert leftovers(daemon) == NOTHING_LEFT


def test_bridge_ip_and_gateway(daemon: Daemon, launch_dir: Path) -> None:
    subnet = daemon_subnet(daemon)
    address, gateway = subnet[40], subnet[254]
    (launch_dir / "settings").write_text(
        f"# a comment\n\nprocess=/bin/sh\narg1=-c\narg2=ip -4 addr show eth0; ip route\n"
        f"bridge=seedlan\nip={address}/24\ngw={gateway}\n"
    )
    done = run(daemon, "launch", str(launch_dir))
    assert done.returncode == 0, done.stderr
    assert f"inet {address}/24" in done.stdout
    assert f"default via {gateway} dev eth0" in done.stdout
    assert wait_gone(daemon) == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("process=/bin/true\nuser=99\nshell=/bin/sh\n", "line 3: unknown key 'shell'"),
        (
            "process=/bin/true\nprocess=/bin/false\n",
            "line 2: process given again (first on line 1)",
        ),
        ("process=/bin/true\njust words\n", "line 2: not key=value"),
        ("process=/bin/true\narg2=x\n", "arg1 is missing"),
        ("user=99\n", "no process"),
        ("process=/bin/true\nmemlimit=4M\n", "memlimit '4M' is not a whole number"),
    ],
)
def test_bad_settings_are_refused_naming_the_line(
    daemon: Daemon, launch_dir: Path, text: str, words: str
) -> None:
    (launch_dir / "settings").write_text(text)
    done = run(daemon, "launch", str(launch_dir))
    assert done.returncode == 1
    assert words in done.stderr
    assert done.stderr.startswith(f"corral: launch: {launch_dir}/settings")
    assert done.stderr.count("\n") == 1
    with daemon.client() as client:
        assert client.list() == []
