"""``corral-gitlab`` driven as GitLab Runner's custom executor drives it: ``config``,
``prepare``, ``run SCRIPT STAGE`` per sub-stage, ``cleanup``, each a process of its own
with the runner's variables (``CUSTOM_ENV_CI_JOB_ID``, ``BUILD_FAILURE_EXIT_CODE``...).

The runner's ``config_exec``, ``prepare_exec``, ``run_exec`` and ``cleanup_exec`` are
``corral-gitlab-fast`` (C, executors/gitlab_fast.c), built from this checkout: the stages
go through it, and the tests check when it did the stage itself and when it left it to
the Python driver (``corral-gitlab``), whose results it must give byte for byte."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from executors.common import MAX_INLINE_SCRIPT
from supervisor.client import Client
from tests.conftest import NOTHING_LEFT, Daemon, init_pid, leftovers
from tests.executors.conftest import (
    PYTHON,
    cancel,
    driver_env,
    next_job_id,
    read_until,
    start,
    wait_only_init,
)

BUILD_FAILURE = 77
SYSTEM_FAILURE = 78


class Runner:
    """One job as GitLab Runner runs it with the driver: the same variables for every stage,
    the stage scripts written to files on the host; every stage through *program* (the C
    ``corral-gitlab-fast``), or the Python driver when there is none."""

    def __init__(
        self, daemon: Daemon, tmp_path: Path, program: Path | None = None, **variables: str
    ) -> None:
        self.job_id = next_job_id()
        self.handle = f"gitlab-{self.job_id}"
        self.dir = tmp_path
        self.program = program
        self.exit_code_file = tmp_path / "build-exit-code"
        self.fallbacks_file = tmp_path / "fallbacks"
        self.env = driver_env(
            daemon,
            {
                "CUSTOM_ENV_CI_JOB_ID": str(self.job_id),
                "CUSTOM_ENV_CI_BUILDS_DIR": "/builds",
                "BUILD_FAILURE_EXIT_CODE": str(BUILD_FAILURE),
                "SYSTEM_FAILURE_EXIT_CODE": str(SYSTEM_FAILURE),
                "BUILD_EXIT_CODE_FILE": str(self.exit_code_file),
                "CORRAL_TEST_FALLBACKS": str(self.fallbacks_file),
                **variables,
            },
        )

    def argv(self, *args: str, python: bool = False) -> list[str]:
        if self.program is not None and not python:
            return [str(self.program), *args]
        return [PYTHON, "-m", "executors.gitlab", *args]

    def call(self, *args: str, python: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args, python=python),
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def call_bytes(self, *args: str, python: bool = False) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(*args, python=python),
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            timeout=120,
        )

    def script(self, stage: str, body: str) -> Path:
        """The stage's script as the runner writes it for the ``sh`` shell: strict mode, then
        the commands in one ``eval``."""
        path = self.dir / f"script-{stage}"
        path.write_text(
            "#!/usr/bin/env sh\n\nset -eo pipefail\nset +o noclobber\n"
            f": | eval {shlex.quote(body)}\nexit 0\n"
        )
        return path

    def run(self, stage: str, body: str) -> subprocess.CompletedProcess[str]:
        return self.call("run", str(self.script(stage, body)), stage)

    def start_run(self, stage: str, body: str) -> subprocess.Popen[str]:
        return start(self.argv("run", str(self.script(stage, body)), stage), self.env)

    def fallbacks(self) -> list[str]:
        """The command lines ``corral-gitlab-fast`` left to the Python driver so far (its
        arguments, as the fixture's stand-in ``corral-gitlab`` records them)."""
        if not self.fallbacks_file.exists():
            return []
        return self.fallbacks_file.read_text().splitlines()


@pytest.mark.parametrize("dirs", [[], ["--builds-dir", "/b", "--cache-dir", "/c d"]])
def test_config_names_the_job_container_and_the_directories(
    daemon: Daemon, tmp_path: Path, gitlab_fast: Path, dirs: list[str]
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    done = runner.call("config", *dirs)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["builds_dir"] == (dirs[1] if dirs else "/builds")
    assert config["cache_dir"] == (dirs[3] if dirs else "/cache")
    assert config["hostname"] == runner.handle
    assert config["driver"]["name"] == "corral" and config["driver"]["version"]
    assert config["job_env"] == {"CORRAL_HANDLE": runner.handle}
    assert runner.fallbacks() == []
    python = runner.call("config", *dirs, python=True)
    assert (python.returncode, python.stdout, python.stderr) == (0, done.stdout, "")


def test_a_passing_job_runs_every_stage_in_one_container_and_leaves_nothing(
    fresh_daemon: Daemon, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(fresh_daemon, tmp_path, gitlab_fast)
    prepared = runner.call("prepare")
    assert prepared.returncode == 0, prepared.stderr
    sources = runner.run("get_sources", "mkdir -p /builds/p && cd /builds/p && echo fetched > src")
    assert sources.returncode == 0, sources.stderr
    build = runner.run(
        "build_script", "cd /builds/p && cat src && hostname && id -u && echo oops >&2"
    )
    assert build.returncode == 0, build.stderr
    assert build.stdout == f"fetched\n{runner.handle}\n10000\n"
    assert build.stderr == "oops\n"
    assert not runner.exit_code_file.exists()
    cleaned = runner.call("cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (prepared.stdout, cleaned.stdout) == (
        f"corral-gitlab: container {runner.handle} created\n",
        "",
    )
    assert runner.fallbacks() == []  # every stage was the C program's
    assert leftovers(fresh_daemon) == NOTHING_LEFT


def test_a_failing_script_is_a_build_failure_and_after_script_still_runs(
    daemon: Daemon, client: Client, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    build = runner.run("build_script", "echo before; false; echo after")
    assert build.returncode == BUILD_FAILURE, build.stderr
    assert build.stdout == "before\n"
    assert runner.exit_code_file.read_text() == "1\n"
    after = runner.run("after_script", "echo after_script ran")
    assert (after.returncode, after.stdout) == (0, "after_script ran\n")
    assert runner.fallbacks() == []
    assert runner.call("cleanup").returncode == 0
    assert runner.handle not in client.list()


def test_sigterm_mid_stage_kills_the_stage_and_exits_then_cleanup_destroys(
    daemon: Daemon, client: Client, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    stage = runner.start_run("build_script", "echo started; sleep 1000 & sleep 1000; echo finished")
    read_until(stage, "started")
    status, out, err = cancel(stage)
    assert status == BUILD_FAILURE, err
    assert "finished" not in out
    assert (
        err
        == "corral-gitlab: run build_script: cancelled by SIGTERM; the stage's processes were killed\n"
    )
    wait_only_init(client, runner.handle)  # both sleeps gone, the container kept
    after = runner.run("after_script", "echo still usable")
    assert (after.returncode, after.stdout) == (0, "still usable\n")
    assert runner.fallbacks() == []
    assert runner.call("cleanup").returncode == 0
    assert runner.handle not in client.list()


def test_sigint_while_output_streams_kills_the_stage_too(
    daemon: Daemon, client: Client, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    stage = runner.start_run(
        "build_script", "echo started; while :; do echo tick; sleep 0.01; done"
    )
    read_until(stage, "tick")
    stage.send_signal(signal.SIGINT)
    out, err = stage.communicate(timeout=60)
    assert stage.returncode == BUILD_FAILURE, err
    assert err == (
        "corral-gitlab: run build_script: cancelled by SIGINT; the stage's processes were killed\n"
    )
    wait_only_init(client, runner.handle)
    assert runner.fallbacks() == []
    assert runner.call("cleanup").returncode == 0


def test_the_daemon_restarting_between_stages_is_not_noticed(
    fresh_daemon: Daemon, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(fresh_daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    assert runner.run("get_sources", "echo kept > /builds/f").returncode == 0
    fresh_daemon.kill9()
    fresh_daemon.start()
    build = runner.run("build_script", "cat /builds/f")
    assert (build.returncode, build.stdout) == (0, "kept\n"), build.stderr
    assert runner.fallbacks() == []
    assert runner.call("cleanup").returncode == 0
    assert leftovers(fresh_daemon) == NOTHING_LEFT


def test_the_daemon_dying_mid_stage_is_a_system_failure(
    fresh_daemon: Daemon, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(fresh_daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    stage = runner.start_run("build_script", "echo started; sleep 1000")
    read_until(stage, "started")
    fresh_daemon.kill9()
    out, err = stage.communicate(timeout=60)
    assert stage.returncode == SYSTEM_FAILURE
    assert err == "corral-gitlab: run build_script: the daemon closed the connection\n"
    fresh_daemon.start()
    assert runner.call("cleanup").returncode == 0
    assert runner.fallbacks() == []
    assert leftovers(fresh_daemon) == NOTHING_LEFT


def test_a_container_stopped_under_the_stage_is_a_system_failure(
    daemon: Daemon, client: Client, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    stage = runner.start_run("build_script", "echo started; sleep 1000")
    read_until(stage, "started")
    os.kill(init_pid(daemon, runner.handle), signal.SIGKILL)  # from outside: the job has no status
    out, err = stage.communicate(timeout=60)
    assert stage.returncode == SYSTEM_FAILURE
    assert err == (
        f"corral-gitlab: run build_script: container {runner.handle}: the stage's job has no "
        "exit status (the container stopped under it)\n"
    )
    assert not runner.exit_code_file.exists()
    assert runner.fallbacks() == []
    assert runner.call("cleanup").returncode == 0
    assert runner.handle not in client.list()


def test_a_script_longer_than_one_argument_is_copied_in_and_removed(
    daemon: Daemon, client: Client, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    padding = "# " + "x" * 98 + "\n"
    body = padding * (MAX_INLINE_SCRIPT // len(padding) + 1) + "echo long script ran; ls /tmp"
    build = runner.run("build_script", body)
    assert build.returncode == 0, build.stderr
    # It ran from a copy in the container's /tmp, which is gone once the stage has ended.
    assert build.stdout.startswith("long script ran\ncorral-gitlab-")
    left = client.run(runner.handle, "ls /tmp")
    assert left[0] == 0 and "corral-gitlab" not in left[1]
    # The C program leaves that rare case to the Python driver.
    assert runner.fallbacks() == [f"run {runner.dir / 'script-build_script'} build_script"]
    assert runner.call("cleanup").returncode == 0


def test_prepare_retried_replaces_the_container_of_its_earlier_attempt(
    daemon: Daemon, client: Client, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    assert runner.run("get_sources", "touch /builds/first-attempt").returncode == 0
    assert runner.call("prepare").returncode == 0
    check = runner.run("build_script", "ls /builds")
    assert (check.returncode, check.stdout) == (0, ""), check.stderr
    assert runner.call("cleanup").returncode == 0
    assert runner.fallbacks() == []


def test_a_mapped_image_is_the_root_filesystem(
    daemon: Daemon, client: Client, tmp_path: Path, images: Path, gitlab_fast: Path
) -> None:
    runner = Runner(
        daemon,
        tmp_path,
        gitlab_fast,
        CUSTOM_ENV_CI_JOB_IMAGE="busybox:1",
        CORRAL_IMAGES=str(images),
    )
    assert runner.call("prepare").returncode == 0
    assert runner.run("build_script", "test -x /bin/busybox").returncode == 0
    assert runner.call("cleanup").returncode == 0
    assert runner.fallbacks() == []


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("127.0.0.1:9/corral/none:1", "127.0.0.1:9"),  # nothing listens on loopback's port 9
        ("../../etc", "../../etc"),
        ("a//b", "a//b"),
    ],
)
def test_an_image_it_cannot_get_is_a_system_failure_naming_it(
    daemon: Daemon,
    client: Client,
    tmp_path: Path,
    images: Path,
    gitlab_fast: Path,
    image: str,
    reason: str,
) -> None:
    runner = Runner(
        daemon, tmp_path, gitlab_fast, CUSTOM_ENV_CI_JOB_IMAGE=image, CORRAL_IMAGES=str(images)
    )
    done = runner.call("prepare")
    assert done.returncode == SYSTEM_FAILURE
    assert reason in done.stderr and "Traceback" not in done.stderr
    assert runner.handle not in client.list()
    assert runner.fallbacks() == ["prepare"]  # the Python driver asks the daemon for it


def test_run_without_a_container_is_a_system_failure(
    daemon: Daemon, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    done = runner.run("build_script", "true")
    assert done.returncode == SYSTEM_FAILURE
    assert runner.handle in done.stderr and "Traceback" not in done.stderr
    assert runner.fallbacks() == []
    python = runner.call(
        "run", str(runner.dir / "script-build_script"), "build_script", python=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        python.returncode,
        python.stdout,
        python.stderr,
    )
    cleaned = runner.call("cleanup")  # nothing to destroy is fine
    assert (cleaned.returncode, cleaned.stdout, cleaned.stderr) == (0, "", "")
    assert runner.fallbacks() == []


#: Output no text decoding keeps: every byte, UTF-8 of a surrogate (ED A0 80), past
#: U+10FFFF (F4 90 80 80), a cut sequence (E2 82), and a proper é.
AWKWARD_BYTES = bytes(range(256)) * 8 + b"\xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82 \xc3\xa9 A\n"
#: Output of ``seq 1 400000``: 2.9 MB, many of the daemon's 256 KiB stream chunks, and a
#: ``link`` reply longer than the C program reads of it.
SEQ = "".join(f"{i}\n" for i in range(1, 400001)).encode()


def test_run_output_is_the_python_drivers_byte_for_byte(
    daemon: Daemon, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    assert runner.call("prepare").returncode == 0
    encoded = base64.b64encode(AWKWARD_BYTES).decode()
    body = f"echo {encoded} | base64 -d; echo {encoded} | base64 -d >&2; seq 1 400000; exit 3"
    script = str(runner.script("build_script", body))
    done = runner.call_bytes("run", script, "build_script")
    assert done.returncode == BUILD_FAILURE, done.stderr[-500:]
    assert done.stdout == AWKWARD_BYTES + SEQ
    assert done.stderr == AWKWARD_BYTES
    assert runner.exit_code_file.read_text() == "3\n"
    assert runner.fallbacks() == []
    runner.exit_code_file.unlink()
    python = runner.call_bytes("run", script, "build_script", python=True)
    assert (python.returncode, python.stdout, python.stderr) == (
        done.returncode,
        done.stdout,
        done.stderr,
    )
    assert runner.exit_code_file.read_text() == "3\n"
    assert runner.call("cleanup").returncode == 0


@pytest.mark.parametrize(
    ("variables", "script", "args", "falls_back"),
    [
        # The C program's own: a message as the Python driver's, word for word.
        ({"CUSTOM_ENV_CI_JOB_ID": ""}, b"true\n", ["build_script"], False),
        ({"CUSTOM_ENV_CI_JOB_ID": "12a"}, b"true\n", ["build_script"], False),
        ({"CORRAL_SOCKET": "/nonexistent/corral.sock"}, b"true\n", ["build_script"], False),
        ({}, None, ["build_script"], False),  # no script file
        ({}, b"true\n", [""], False),  # no stage name
        (
            {
                "CORRAL_GRACE_TIME": "60",
                "CORRAL_LIMITS": '{"mem": 1e9, "x": [true, null, "\\u00e9"]}',
            },
            b"true\n",
            ["build_script"],
            False,
        ),
        (
            {"SYSTEM_FAILURE_EXIT_CODE": "", "CUSTOM_ENV_CI_JOB_ID": "x"},
            b"true\n",
            ["build_script"],
            False,
        ),
        # Left to the Python driver.
        ({"CORRAL_LIMITS": "{mem"}, b"true\n", ["build_script"], True),
        ({"CORRAL_GRACE_TIME": "-1"}, b"true\n", ["build_script"], True),
        ({"CORRAL_DISK_SIZE_MB": "1e3"}, b"true\n", ["build_script"], True),
        ({"CUSTOM_ENV_CI_JOB_ID": "it's"}, b"true\n", ["build_script"], True),
        ({}, b"echo \xff\n", ["build_script"], True),  # not UTF-8
        ({}, b"echo \0\n", ["build_script"], True),
        ({}, b"true\n", [], True),  # the runner gives SCRIPT and STAGE: usage
        ({}, b"true\n", ["build_script", "extra"], True),
    ],
)
def test_run_fails_as_the_python_driver_fails(
    daemon: Daemon,
    tmp_path: Path,
    gitlab_fast: Path,
    variables: dict[str, str],
    script: bytes | None,
    args: list[str],
    falls_back: bool,
) -> None:
    """Against no container (every stage fails): the C program reports what it checks as
    the Python driver does, and leaves to it what it does not read."""
    runner = Runner(daemon, tmp_path, gitlab_fast, **variables)
    path = tmp_path / "script"
    if script is not None:
        path.write_bytes(script)
    done = runner.call("run", str(path), *args)
    python = runner.call("run", str(path), *args, python=True)
    assert done.returncode in (SYSTEM_FAILURE, 2), done.stderr
    assert (done.returncode, done.stdout, done.stderr) == (
        python.returncode,
        python.stdout,
        python.stderr,
    )
    assert "Traceback" not in done.stderr
    assert runner.fallbacks() == ([" ".join(["run", str(path), *args])] if falls_back else [])


def test_bad_settings_and_a_missing_job_id_are_named(daemon: Daemon, tmp_path: Path) -> None:
    runner = Runner(daemon, tmp_path, CORRAL_LIMITS="{mem")
    done = runner.call("prepare")
    assert done.returncode == SYSTEM_FAILURE and "CORRAL_LIMITS: not JSON" in done.stderr
    runner = Runner(daemon, tmp_path, CUSTOM_ENV_CI_JOB_ID="")
    done = runner.call("config")
    assert done.returncode == SYSTEM_FAILURE and "CUSTOM_ENV_CI_JOB_ID" in done.stderr
    runner = Runner(daemon, tmp_path, CORRAL_SOCKET=str(tmp_path / "none.sock"))
    done = runner.call("prepare")
    assert done.returncode == SYSTEM_FAILURE and "cannot reach corrald" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no stage given"),
        (["run", "/tmp/script"], "run takes SCRIPT STAGE, got 1 arguments"),
        (["build"], "'build' is not a stage"),
        (["prepare", "--builds-dir"], "--builds-dir ''"),
        (["config", "--builds-dir", "builds"], "an absolute path"),
    ],
)
def test_a_command_line_the_runner_would_not_make_is_refused_with_usage(
    daemon: Daemon, tmp_path: Path, argv: list[str], message: str
) -> None:
    done = Runner(daemon, tmp_path).call(*argv)
    assert done.returncode == 2 and "usage: corral-gitlab" in done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "variables", "falls_back"),
    [
        # The C program's own: a message as the Python driver's, word for word.
        (["config"], {"CUSTOM_ENV_CI_JOB_ID": ""}, False),
        (["prepare"], {"CUSTOM_ENV_CI_JOB_ID": "12a"}, False),
        (["cleanup"], {"CUSTOM_ENV_CI_JOB_ID": "x", "SYSTEM_FAILURE_EXIT_CODE": ""}, False),
        (["prepare"], {"CORRAL_SOCKET": "/nonexistent/corral.sock"}, False),
        (["cleanup"], {"CORRAL_SOCKET": "/nonexistent/corral.sock"}, False),
        (["prepare", "--builds-dir", "/b"], {"CORRAL_SOCKET": "/nonexistent/c.sock"}, False),
        # Left to the Python driver.
        (["prepare"], {"CORRAL_LIMITS": "{mem"}, True),
        (["prepare"], {"CORRAL_LIMITS": "[1]"}, True),
        (["cleanup"], {"CORRAL_GRACE_TIME": "-1"}, True),
        (["prepare"], {"CORRAL_DISK_SIZE_MB": "abc"}, True),
        (["prepare"], {"CUSTOM_ENV_CI_JOB_ID": "it's"}, True),
        (["prepare"], {"CUSTOM_ENV_CI_JOB_IMAGE": "it's"}, True),
        ([], {}, True),  # usage
        (["--help"], {}, True),
        (["build"], {}, True),
        (["cleanup", "extra"], {}, True),
        (["prepare", "--builds-dir"], {}, True),
        (["config", "--builds-dir", "builds"], {}, True),
        (["config", "--cache", "/c"], {}, True),
    ],
)
def test_config_prepare_cleanup_fail_as_the_python_driver_fails(
    daemon: Daemon,
    client: Client,
    tmp_path: Path,
    gitlab_fast: Path,
    argv: list[str],
    variables: dict[str, str],
    falls_back: bool,
) -> None:
    """The C program reports what it checks as the Python driver does, and leaves to it
    what it does not read; neither creates the container."""
    runner = Runner(daemon, tmp_path, gitlab_fast, **variables)
    done = runner.call(*argv)
    python = runner.call(*argv, python=True)
    assert done.returncode != 0 or argv == ["--help"], done.stderr
    assert (done.returncode, done.stdout, done.stderr) == (
        python.returncode,
        python.stdout,
        python.stderr,
    )
    assert "Traceback" not in done.stderr
    assert runner.fallbacks() == ([" ".join(argv)] if falls_back else [])
    assert runner.handle not in client.list()


def test_prepare_failing_to_make_the_directories_fails_as_the_python_driver(
    daemon: Daemon, tmp_path: Path, gitlab_fast: Path
) -> None:
    runner = Runner(daemon, tmp_path, gitlab_fast)
    argv = ["prepare", "--builds-dir", "/proc/no/builds"]
    done = runner.call(*argv)
    assert done.returncode == SYSTEM_FAILURE
    assert done.stderr.startswith(
        f"corral-gitlab: prepare: container {runner.handle}: cannot make '/proc/no/builds' "
        "'/cache': "
    )
    assert done.stderr.endswith("\n") and not done.stderr.endswith(" \n")
    python = runner.call(*argv, python=True)  # replaces the C program's container
    assert (python.returncode, python.stdout, python.stderr) == (
        done.returncode,
        done.stdout,
        done.stderr,
    )
    assert runner.fallbacks() == []
    assert runner.call("cleanup").returncode == 0


class FakeDaemon:
    """A socket answering as corrald would a prepare and a cleanup, recording each request:
    ``destroy`` finds no such container, ``create`` and ``run`` succeed; a request named
    *hang_on* is never answered (``hung`` is set once it came)."""

    def __init__(self, path: Path, hang_on: str = "") -> None:
        self.path = path
        self.hang_on = hang_on
        self.hung = threading.Event()
        self.closed = threading.Event()
        self.requests: list[list[object]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    request = json.loads(line)
                    self.requests.append(request)
                    if request[0] == self.hang_on:
                        self.hung.set()
                        self.closed.wait()
                        return
                    if request[0] == "destroy":
                        payload: object = {"code": "unknown_handle", "message": "no such"}
                        reply = {"type": "error", "payload": payload}
                    elif request[0] == "create":
                        reply = {"type": "object", "payload": request[1]["handle"]}
                    else:
                        reply = {"type": "object", "payload": [0, "", ""]}
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self.closed.set()
        # shutdown wakes the accept() the thread waits in; close alone would not, and the
        # thread would hold a reserved fd for the rest of the test run (which the process
        # metrics test counts).
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {
            "CORRAL_GRACE_TIME": "007.250",
            "CORRAL_DISK_SIZE_MB": "0512.9",
            "CORRAL_LIMITS": '{"mem": 1e9, "cpus": 1.5, "pids": 64, "x": ["\\u00e9", null]}',
            "CUSTOM_ENV_CI_JOB_IMAGE": "busybox:1",
        },
        {"CORRAL_GRACE_TIME": "0", "CORRAL_DISK_SIZE_MB": "0.5", "CORRAL_LIMITS": " { } "},
        {"CORRAL_GRACE_TIME": "0.0001", "CORRAL_LIMITS": '{"mem": 1, "mem": 2}'},
    ],
)
def test_prepare_and_cleanup_ask_the_daemon_what_the_python_driver_asks(
    daemon: Daemon, tmp_path: Path, images: Path, gitlab_fast: Path, variables: dict[str, str]
) -> None:
    """Settings, the image's directory, the job's properties and directories: the requests
    of the C program and of the Python driver, to a daemon that records them, are equal
    (as JSON values; their texts differ in spacing)."""
    fake = FakeDaemon(tmp_path / "fake.sock")
    try:
        runner = Runner(
            daemon,
            tmp_path,
            gitlab_fast,
            CORRAL_SOCKET=str(fake.path),
            CORRAL_IMAGES=str(images),
            **variables,
        )
        outputs = []
        for python in (False, True):
            for stage in (["prepare", "--cache-dir", "/c c"], ["cleanup"]):
                done = runner.call(*stage, python=python)
                assert done.returncode == 0, done.stderr
                outputs.append((done.stdout, done.stderr))
        assert runner.fallbacks() == []
    finally:
        fake.close()
    assert outputs[:2] == outputs[2:]
    half = len(fake.requests) // 2
    assert [r[0] for r in fake.requests[:half]] == ["destroy", "create", "run", "destroy"]
    # As text again: 900 and 900.0 are equal numbers, not the same JSON.
    assert json.dumps(fake.requests[:half]) == json.dumps(fake.requests[half:])
    create = fake.requests[1][1]
    assert isinstance(create, dict) and create["handle"] == runner.handle
    if "CUSTOM_ENV_CI_JOB_IMAGE" in variables:
        assert create["rootfs"] == str(images / "busybox" / "1")


@pytest.mark.parametrize("hang_on", ["destroy", "create", "run"])
def test_sigterm_during_prepare_ends_it_as_the_python_driver_does(
    tmp_path: Path, daemon: Daemon, gitlab_fast: Path, hang_on: str
) -> None:
    """The runner's cancel while prepare waits for the daemon: the stage ends at once with
    the Python driver's line and BUILD_FAILURE_EXIT_CODE."""
    runner = Runner(daemon, tmp_path, gitlab_fast)
    results = []
    for python in (False, True):
        fake = FakeDaemon(tmp_path / f"fake-{python}.sock", hang_on=hang_on)
        try:
            runner.env["CORRAL_SOCKET"] = str(fake.path)
            process = start(runner.argv("prepare", python=python), runner.env)
            assert fake.hung.wait(timeout=60), "prepare never asked the daemon"
            status, out, err = cancel(process)
            results.append((status, out, err))
        finally:
            fake.close()
        assert runner.fallbacks() == []
    assert results[0] == results[1]
    assert results[0][0] == BUILD_FAILURE
    assert results[0][2] == "corral-gitlab: prepare: cancelled by SIGTERM\n"
