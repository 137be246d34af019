"""The GitHub Actions container hooks driven as the runner drives them: the runner's
``ACTIONS_RUNNER_CONTAINER_HOOKS`` script (``executors/github-hooks.sh``) run once per hook
with the hook's JSON on stdin, shaped as in actions/runner-container-hooks' ``examples/``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor.client import Client
from tests.conftest import NOTHING_LEFT, REPO, Daemon, leftovers
from tests.executors.conftest import PYTHON, cancel, driver_env, read_until, start, wait_only_init

HOOKS_SCRIPT = REPO / "executors" / "github-hooks.sh"


class Runner:
    """One job of a self-hosted runner: its work directory on the host (``_work``, bound at
    ``/__w``), the response file of each hook, and the ``state`` prepare_job returned."""

    def __init__(self, daemon: Daemon, tmp_path: Path, images: Path) -> None:
        self.work = tmp_path / "_work"
        self.workspace = self.work / "repo" / "repo"
        self.temp = self.work / "_temp"
        for d in (self.workspace, self.temp / "_github_home", self.temp / "_github_workflow"):
            d.mkdir(parents=True)
        # The hooks script runs `corral-github-hooks` from PATH: here, the checkout's.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "corral-github-hooks"
        shim.write_text(f'#!/bin/sh\nexec {PYTHON} -m executors.github "$@"\n')
        shim.chmod(0o755)
        self.env = driver_env(
            daemon,
            {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CORRAL_IMAGES": str(images)},
        )
        self.docker_socket = tmp_path / "docker.sock"
        self.docker_socket.write_text("a Docker daemon's socket\n")
        self.state: dict[str, Any] = {}
        self.responses = tmp_path / "responses"
        self.responses.mkdir()

    def mounts(self) -> list[dict[str, Any]]:
        """The runner's system mounts, as in examples/prepare-job.json, with this host's
        paths (a Docker socket among them, which must not be bound)."""
        pairs = [
            (str(self.docker_socket), "/var/run/docker.sock"),
            (str(self.work), "/__w"),
            (str(self.temp), "/__w/_temp"),
            (str(self.temp / "_github_home"), "/github/home"),
            (str(self.temp / "_github_workflow"), "/github/workflow"),
        ]
        return [{"sourceVolumePath": s, "targetVolumePath": t, "readOnly": False} for s, t in pairs]

    def hook(self, command: str, args: dict[str, Any] | None) -> tuple[dict[str, Any], Path]:
        response = self.responses / f"{command}-{len(list(self.responses.iterdir()))}.json"
        response.touch()  # the runner makes it before it calls the hook
        payload = {"command": command, "responseFile": str(response), "state": self.state}
        if args is not None:
            payload["args"] = args
        return payload, response

    def call(
        self, command: str, args: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        payload, _ = self.hook(command, args)
        return subprocess.run(
            ["sh", str(HOOKS_SCRIPT)],
            input=json.dumps(payload),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def prepare(self, image: str = "busybox:1") -> subprocess.CompletedProcess[str]:
        args = {
            "container": {
                "image": image,
                "workingDirectory": "/__w/repo/repo",
                "createOptions": "--cpus 1",
                "environmentVariables": {"NODE_ENV": "development"},
                "userMountVolumes": [],
                "systemMountVolumes": self.mounts(),
                "registry": None,
                "portMappings": [],
            },
            "services": [],
        }
        payload, response = self.hook("prepare_job", args)
        done = subprocess.run(
            ["sh", str(HOOKS_SCRIPT)],
            input=json.dumps(payload),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:
            self.state = json.loads(response.read_text())["state"]
        return done

    def step_args(
        self, script: str, prepend: str | list[str] = "/opt/tool/bin:/opt/x"
    ) -> dict[str, Any]:
        """A script step as the runner sends it: the script in _temp, run by ``sh -e``;
        ``prependPath`` a list (the hooks' examples) or one string (some runner versions)."""
        path = self.temp / f"step-{len(list(self.temp.iterdir()))}.sh"
        path.write_text(script)
        return {
            "entryPointArgs": ["-e", f"/__w/_temp/{path.name}"],
            "entryPoint": "sh",
            "environmentVariables": {"GREETING": "hello from the workflow"},
            "prependPath": prepend,
            "workingDirectory": "/__w/repo/repo",
        }

    def step(
        self, script: str, prepend: str | list[str] = "/opt/tool/bin:/opt/x"
    ) -> subprocess.CompletedProcess[str]:
        return self.call("run_script_step", self.step_args(script, prepend))

    @property
    def handle(self) -> str:
        return str(self.state["handle"])


@pytest.fixture
def runner(daemon: Daemon, tmp_path: Path, images: Path) -> Runner:
    return Runner(daemon, tmp_path, images)


def test_a_passing_job_runs_its_steps_in_one_container_and_leaves_nothing(
    fresh_daemon: Daemon, tmp_path: Path, images: Path
) -> None:
    runner = Runner(fresh_daemon, tmp_path, images)
    prepared = runner.prepare()
    assert prepared.returncode == 0, prepared.stderr
    response = json.loads(next(runner.responses.glob("prepare_job-*")).read_text())
    assert response["context"] == {"container": {"id": runner.handle}, "services": []}
    assert response["isAlpine"] is False
    build = runner.step('echo "$GREETING, $NODE_ENV" in "$PWD"; echo "$PATH" >&2; echo built > out')
    assert build.returncode == 0, build.stderr
    assert build.stdout == "hello from the workflow, development in /__w/repo/repo\n"
    assert build.stderr.startswith("/opt/tool/bin:/opt/x:/")
    assert (runner.workspace / "out").read_text() == "built\n"  # through the work dir's bind
    test = runner.step(
        "cat out; hostname; echo $PATH; test ! -e /var/run/docker.sock",
        prepend=["/opt/a", "/opt/b"],
    )
    assert test.returncode == 0, test.stderr
    assert test.stdout.startswith(f"built\n{runner.handle}\n/opt/a:/opt/b:/")
    cleaned = runner.call("cleanup_job")
    assert cleaned.returncode == 0, cleaned.stderr
    assert leftovers(fresh_daemon) == NOTHING_LEFT


def test_a_failing_step_exits_with_its_status(runner: Runner, client: Client) -> None:
    assert runner.prepare().returncode == 0
    failed = runner.step("echo trying; exit 5")
    assert (failed.returncode, failed.stdout) == (5, "trying\n")
    assert runner.step("true").returncode == 0  # later steps (always()) still run
    assert runner.call("cleanup_job").returncode == 0
    assert runner.handle not in client.list()


def test_sigterm_mid_step_kills_the_step_and_exits(runner: Runner, client: Client) -> None:
    assert runner.prepare().returncode == 0
    payload, _ = runner.hook(
        "run_script_step", runner.step_args("echo started; sleep 1000 & sleep 1000; echo finished")
    )
    step = start(["sh", str(HOOKS_SCRIPT)], runner.env, stdin=json.dumps(payload))
    read_until(step, "started")
    status, out, err = cancel(step)
    assert status == 1 and "cancelled by SIGTERM" in err and "finished" not in out
    wait_only_init(client, runner.handle)
    assert runner.call("cleanup_job").returncode == 0
    assert runner.handle not in client.list()


def test_the_daemon_restarting_between_steps_is_not_noticed(
    fresh_daemon: Daemon, tmp_path: Path, images: Path
) -> None:
    runner = Runner(fresh_daemon, tmp_path, images)
    assert runner.prepare().returncode == 0
    assert runner.step("echo kept > /tmp/f").returncode == 0
    fresh_daemon.kill9()
    fresh_daemon.start()
    after = runner.step("cat /tmp/f")
    assert (after.returncode, after.stdout) == (0, "kept\n"), after.stderr
    assert runner.call("cleanup_job").returncode == 0
    assert leftovers(fresh_daemon) == NOTHING_LEFT


def test_a_container_step_runs_in_a_container_of_its_own_that_goes(
    runner: Runner, client: Client
) -> None:
    assert runner.prepare().returncode == 0
    (runner.workspace / "input").write_text("from the job\n")
    args = {
        "image": "busybox:1",
        "dockerfile": None,
        "entryPointArgs": ["-c", 'cat input; echo "$NODE_ENV"; hostname'],
        "entryPoint": "sh",
        "workingDirectory": "/__w/repo/repo",
        "createOptions": "--cpus 1",
        "environmentVariables": {"NODE_ENV": "development"},
        "prependPath": [],
        "userMountVolumes": [],
        "systemMountVolumes": runner.mounts(),
        "registry": None,
        "portMappings": [],
    }
    before = set(client.list())
    done = runner.call("run_container_step", args)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[:2] == ["from the job", "development"]
    assert out[2].startswith("github-step-")
    assert set(client.list()) == before
    assert runner.call("cleanup_job").returncode == 0


def test_no_job_container_is_nothing_to_do(runner: Runner, client: Client) -> None:
    before = set(client.list())
    payload, response = runner.hook("prepare_job", {"services": []})
    done = subprocess.run(
        ["sh", str(HOOKS_SCRIPT)], input=json.dumps(payload), env=runner.env, text=True
    )
    assert done.returncode == 0 and response.read_text() == ""
    assert set(client.list()) == before
    assert runner.call("cleanup_job").returncode == 0


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("{", "input: not JSON"),
        ('{"command": "run_job"}', "input.command: 'run_job' is not one of"),
        ('{"command": "run_script_step", "state": {}, "args": {}}', "state.handle"),
    ],
)
def test_bad_input_is_named(runner: Runner, stdin: str, message: str) -> None:
    done = subprocess.run(
        ["sh", str(HOOKS_SCRIPT)], input=stdin, env=runner.env, capture_output=True, text=True
    )
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_an_unknown_image_or_services_create_nothing(runner: Runner, client: Client) -> None:
    before = set(client.list())
    done = runner.prepare(image="127.0.0.1:9/node:22")  # no registry listens there
    assert done.returncode == 1 and "127.0.0.1:9" in done.stderr
    payload, _ = runner.hook("prepare_job", {"services": [{"image": "redis", "contextName": "r"}]})
    done = subprocess.run(
        ["sh", str(HOOKS_SCRIPT)],
        input=json.dumps(payload),
        env=runner.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "args.services" in done.stderr
    assert set(client.list()) == before


def test_sigterm_mid_container_step_kills_it_and_destroys_its_container(
    runner: Runner, client: Client
) -> None:
    assert runner.prepare().returncode == 0
    before = set(client.list())
    args = {
        "image": "busybox:1",
        "entryPoint": "sh",
        "entryPointArgs": ["-c", "echo started; sleep 1000"],
        "workingDirectory": "/__w",
        "environmentVariables": {},
        "systemMountVolumes": runner.mounts(),
        "userMountVolumes": [],
    }
    payload, _ = runner.hook("run_container_step", args)
    step = start(["sh", str(HOOKS_SCRIPT)], runner.env, stdin=json.dumps(payload))
    read_until(step, "started")
    assert len(set(client.list()) - before) == 1  # the step's own container
    status, _, err = cancel(step)
    assert status == 1 and "cancelled by SIGTERM" in err
    assert set(client.list()) == before
    assert runner.call("cleanup_job").returncode == 0
