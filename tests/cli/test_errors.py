"""A user's mistake is one line saying what is wrong and what to do, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import command, corral, no_traceback
from tests.conftest import REPO, Daemon


def test_no_daemon(daemon: Daemon, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "-s", str(tmp_path / "none.sock"), "ps"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert "the daemon is not running" in no_traceback(done)
    assert "corraldctl start" in done.stderr


def test_permission_denied_names_the_socket_group(daemon: Daemon) -> None:
    """As nobody, on the daemon's 0600 root socket (the system python: the venv's is
    under /root)."""
    assert daemon.socket.stat().st_mode & 0o777 == 0o600
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "/usr/bin/python3", "-m", "supervisor.cli", "-s", str(daemon.socket), "ping"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1
    assert "permission denied" in no_traceback(done) and "socket_group" in done.stderr


def test_broken_pipe_is_silent(daemon: Daemon) -> None:
    cli = subprocess.Popen(
        command(daemon, "run", "--rm", "--", "sh", "-c", "yes | head -c 5000000"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None and cli.stderr is not None
    cli.stdout.read(10)
    cli.stdout.close()  # `corral ... | head -c 10`
    assert cli.wait(timeout=30) == 141
    assert cli.stderr.read() == b""


def test_mistakes(daemon: Daemon) -> None:
    for args, says in [
        (["exec", "nosuch", "--", "true"], "unknown handle 'nosuch' (`corral ps -a` lists"),
        (["raw", '["x"'], "the request is not JSON"),
        (["create", "--config", "[1]"], "--config must be a JSON object"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
        (["run", "--memory"], "expected one argument (`corral run --help` tells more)"),
        (["ps", "--filter", "colour=red"], "use state=STATE or property=KEY=VALUE"),
        (["exec", "-it", "x", "sh"], "the input device is not a TTY"),
        (["run", "-i", "--json", "--", "true"], "--json prints the output at the end"),
    ]:
        done = corral(daemon, *args)
        assert done.returncode in (1, 2), done
        assert says in no_traceback(done), (args, done.stderr)


def test_help_of_every_command(daemon: Daemon) -> None:
    from supervisor.cli import BUILTIN, plugin_commands

    for name in sorted({*BUILTIN, *plugin_commands()}):
        done = corral(daemon, name, "--help")
        assert done.returncode == 0 and done.stdout.startswith("usage: corral "), done
    env = {**os.environ, "CORRAL_SOCKET": str(daemon.socket)}
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "ping"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert (done.returncode, done.stdout) == (0, "pong\n")
