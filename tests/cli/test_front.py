"""The C front (supervisor/cli/front.c) and the Python CLI give the same results.

Each case runs ``corral ARGS`` both ways against the same daemon: the front built from
this checkout, and ``python -m supervisor.cli``. For the cases the front takes itself,
it runs with ``CORRAL_PYTHON_CLI=/bin/false``: had it handed the command to Python, it
would fail with no output, so an equal result is the front's own. The cases it leaves
to Python run with this checkout's Python CLI beside it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.client import Client
from tests.cli.oneshot import make_chroot, readline, wait_gone
from tests.cli.paths import PYTHON, front
from tests.conftest import REPO, Daemon, wait_until

#: The front with no Python to fall back on: what it does, it does itself.
FRONT_ALONE = {"CORRAL_PYTHON_CLI": "/bin/false"}


def run_with(
    argv: list[str], daemon: Daemon, args: tuple[str, ...], env: dict[str, str], **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [*argv, "-s", str(daemon.socket), *args],
        capture_output=True,
        timeout=60,
        cwd=kw.pop("cwd", REPO),
        env={**os.environ, **env},
        **kw,
    )


def both(
    daemon: Daemon, *args: str, alone: bool = True, **kw: Any
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """``corral ARGS`` through the front (alone: without a Python to hand it to), then
    through Python; each one's (status, stdout, stderr)."""
    env = kw.pop("env", {})
    fast = run_with([front()], daemon, args, {**env, **(FRONT_ALONE if alone else {})}, **kw)
    slow = run_with(PYTHON, daemon, args, env, **kw)
    return fast, slow


def result(done: subprocess.CompletedProcess[bytes]) -> tuple[int, bytes, bytes]:
    """Exit status, stdout and stderr, the handles the daemon made up replaced by HANDLE."""

    def plain(text: bytes) -> bytes:
        return re.sub(rb"\b[0-9a-f]{12}\b", b"HANDLE", text)

    return done.returncode, plain(done.stdout), plain(done.stderr)


def same(daemon: Daemon, *args: str, alone: bool = True, **kw: Any) -> tuple[int, bytes, bytes]:
    """Both ways give the same exit status, stdout and stderr: which."""
    fast, slow = both(daemon, *args, alone=alone, **kw)
    assert result(fast) == result(slow), (args, fast, slow)
    return result(fast)


@pytest.fixture
def chroot(artifacts: tuple[Path, Path], tmp_path: Path) -> Path:
    return make_chroot(artifacts, tmp_path / "chroot")


@pytest.mark.parametrize("code", [0, 3])
def test_run_rm_exit_status_and_output(daemon: Daemon, client: Client, code: int) -> None:
    before = client.list()
    script = f"echo out; echo err >&2; printf 'x\\377y'; exit {code}"
    assert same(daemon, "run", "--rm", "--", "sh", "-c", script) == (
        code,
        b"out\nx\xffy",
        b"err\n",
    )
    assert client.list() == before


def test_run_options_give_the_same_job(
    daemon: Daemon, client: Client, artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """-e (repeated, and -e K from our environment), -w, -u, --privileged, limits, and a
    relative --rootfs made absolute."""
    rootfs = artifacts[1]
    script = 'echo "$A $B $C"; pwd; id -u; cat /proc/self/status | grep -c Cap; echo "$0 $1"'
    status, out, err = same(
        daemon,
        "run", "--rm", "-e", "A=1", "--env", "B=two words", "-e", "A=3", "-e", "C",
        "-w", "/tmp", "--user=root", "--privileged", "-m", "64m", "--cpus", "0.50",
        "--cpuset-cpus", "0", "--pids-limit", "050", "--timeout", "30",
        "--rootfs", os.path.relpath(rootfs, tmp_path),
        "--", "sh", "-c", script, "zero", "o'ne",
        cwd=tmp_path, env={"C": "from-env"},
    )  # fmt: skip
    assert (status, err) == (0, b"")
    assert out.decode().splitlines()[:3] == ["3 two words from-env", "/tmp", "0"]
    assert out.decode().splitlines()[-1] == "zero o'ne"


def test_run_without_rm_leaves_the_same_stopped_container(
    daemon: Daemon, client: Client, artifacts: tuple[Path, Path]
) -> None:
    infos: list[tuple[str, dict[str, str], int]] = []
    for argv, env in ((PYTHON, {}), ([front()], FRONT_ALONE)):
        name = f"front-{len(infos)}-{os.getpid()}"
        args = ("run", "--name", name, "-m", "1g", "--rootfs", str(artifacts[1]), "--")
        done = run_with(argv, daemon, (*args, "echo", "it's $HOME"), env)
        assert (done.returncode, done.stdout) == (0, b"it's $HOME\n"), done
        info = client.info(name)
        client.destroy(name)
        properties = info["properties"]
        assert abs(int(properties.pop("corral.created")) - time.time()) < 600
        infos.append((info["state"], properties, info["limits"]["mem"]))
    assert infos[0] == infos[1]
    assert infos[0][0] == "stopped"
    assert infos[0][1]["corral.command"] == "echo 'it'\"'\"'s $HOME'"  # shlex.join


def test_a_large_output_is_the_same(daemon: Daemon) -> None:
    status, out, _ = same(daemon, "run", "--rm", "--", "sh", "-c", "seq 1 100000; seq 5 >&2")
    assert status == 0 and out.count(b"\n") == 100000


def test_contain_status_output_and_stdin(daemon: Daemon, client: Client, chroot: Path) -> None:
    before = client.list()
    for args, stdin in [
        (("--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3"), None),
        (("--overlay", "--", "/bin/cat"), b"line 1\nline 2"),
        (("--user", "1000:1000", "--cpu-core-ids", "0", "--", "id", "-u"), None),
    ]:
        kw: dict[str, Any] = {"input": stdin, "stdin": None} if stdin else {}
        same(daemon, "contain", "-chroot", str(chroot), *args, **kw)
    fed = same(daemon, "contain", "--chroot", str(chroot), "--", "cat", input=b"abc", stdin=None)
    assert fed == (0, b"abc", b"")
    assert client.list() == before


def test_contain_memory_limit_message(daemon: Daemon, chroot: Path) -> None:
    script = "a=x; while true; do a=$a$a; done"
    status, _, err = same(
        daemon,
        "contain",
        "-chroot",
        str(chroot),
        "--memory-limit",
        "16MB",
        "--",
        "sh",
        "-c",
        script,
    )
    assert status == 137
    assert (
        err
        == f"corral: contain: sh was killed: it exceeded the memory limit of {16 << 20} bytes\n".encode()
    )
    assert wait_gone(daemon) == []


def test_the_same_mistakes(daemon: Daemon, client: Client, chroot: Path, tmp_path: Path) -> None:
    """Mistakes the daemon finds (create, spawn) and the ones found before it is asked."""
    before = client.list()
    for args in [
        ("run", "--rm", "--pids-limit", "0", "--", "true"),  # create refuses
        ("run", "--rm", "-u", "nobody-here", "--", "true"),  # spawn refuses
        ("run", "--rm", "--rootfs", str(tmp_path), "--", "true"),  # no bin/
        ("contain", "-chroot", str(tmp_path / "none"), "--", "/bin/true"),
        ("contain", "-chroot", str(chroot), "--bridge", "b0", "--", "/bin/true"),
        ("contain", "-chroot", str(chroot), "--", "/bin/nope"),
        ("contain", "-chroot", "/", "--", "/bin/true"),
    ]:
        status, _, err = same(daemon, *args)
        assert status == 1 and err.startswith(b"corral: ") and err.count(b"\n") == 1, err
    assert client.list() == before


def test_no_daemon(tmp_path: Path) -> None:
    said = set()
    for argv, env in ((PYTHON, {}), ([front()], FRONT_ALONE)):
        done = subprocess.run(
            [*argv, "-s", str(tmp_path / "none.sock"), "run", "--rm", "--", "true"],
            capture_output=True,
            cwd=REPO,
            env={**os.environ, **env},
        )
        assert done.returncode == 1
        assert done.stderr.startswith(b"corral: the daemon is not running (nothing listens on ")
        said.add(done.stderr)
    assert len(said) == 1


def test_what_the_front_leaves_to_python(daemon: Daemon, client: Client) -> None:
    """Other commands, options it does not take, spellings it does not read, argv bytes
    that are not UTF-8: Python's, with the same result."""
    before = client.list()
    for args in [
        ("ping",),
        ("run", "--rm", "-eA=1", "--", "sh", "-c", "echo $A"),
        ("run", "--rm", "--json", "--", "echo", "hi"),
        ("run", "--rm", "-m", "lots", "--", "true"),
        ("run", "--rm", "--cpus", "1e-5", "--", "true"),
        ("run", "--rm", "-e", "NOT_SET_ANYWHERE", "--", "true"),
        ("run", "--rm", "-d", "--", "true"),  # --rm with -d
        ("run", "--rm", "--root", "/", "--", "true"),  # an abbreviation (of --rootfs)
        ("run", "--rm", "--", "printf", "%s", "\udcff"),  # the byte 0xff as argv
        ("contain", "-chroot", "x"),  # no program
        ("nosuchcommand",),
    ]:
        same(daemon, *args, alone=False)
    assert client.list() == before
    # CORRAL_NO_FRONT: every command is Python's, the front's own ones too.
    done = run_with(
        [front()], daemon, ("run", "--rm", "--", "true"), {**FRONT_ALONE, "CORRAL_NO_FRONT": "1"}
    )
    assert (done.returncode, done.stdout) == (1, b"")


def sleepers(daemon: Daemon, chroot: Path) -> Iterator[subprocess.Popen[str]]:
    """The front alone running a job that says "up" and sleeps: with run --rm, then contain
    (each started once the caller is done with the one before)."""
    for args in (
        ("run", "--rm", "--", "sh", "-c", "echo up; exec sleep 60"),
        ("contain", "-chroot", str(chroot), "--", "/bin/sh", "-c", "echo up; exec sleep 60"),
    ):
        yield subprocess.Popen(
            [front(), "-s", str(daemon.socket), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,  # contain copies it: a child of the front's
            text=True,
            env={**os.environ, **FRONT_ALONE},
        )


@pytest.mark.parametrize(
    ("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_signals_go_to_the_job(
    daemon: Daemon, client: Client, chroot: Path, sent: signal.Signals, status: int
) -> None:
    for cli in sleepers(daemon, chroot):
        try:
            assert readline(cli) == "up\n"
            cli.send_signal(sent)
            assert cli.wait(timeout=20) == status
            assert cli.stderr is not None and cli.stderr.read() == ""
        finally:
            cli.kill()
            cli.wait()
        assert wait_gone(daemon) == []


def test_killing_the_front_leaves_nothing(daemon: Daemon, client: Client, chroot: Path) -> None:
    """SIGKILL: the daemon destroys the grace-0 container once our connections are gone,
    the stdin copier's too (it dies with the front)."""
    for cli in sleepers(daemon, chroot):
        assert readline(cli) == "up\n"
        assert len(client.list()) == 1
        cli.kill()
        cli.wait()
        wait_until(lambda: client.list() == [], 15, what="the daemon reaping the container")


@pytest.mark.parametrize("rm", [True, False])
def test_a_reader_that_goes_is_141_and_nothing_left(
    daemon: Daemon, client: Client, rm: bool
) -> None:
    """As Python's: silent, 141, and the container destroyed, even without --rm (the
    job's stream failed, as if it never started)."""
    for argv, env in ((PYTHON, {}), ([front()], FRONT_ALONE)):
        cli = subprocess.Popen(
            [*argv, "-s", str(daemon.socket), "run", *(["--rm"] if rm else []), "--"]
            + ["sh", "-c", "yes | head -c 5000000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, **env},
        )
        assert cli.stdout is not None and cli.stderr is not None
        cli.stdout.read(10)
        cli.stdout.close()
        assert cli.wait(timeout=30) == 141, argv
        assert cli.stderr.read() == b""
        assert client.list() == []


def test_run_passes_no_stdin_without_i(daemon: Daemon) -> None:
    assert same(daemon, "run", "--rm", "--", "cat", input=b"not read", stdin=None) == (0, b"", b"")
