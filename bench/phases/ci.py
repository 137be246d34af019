"""CI executors: a job's overhead through the drivers against its stages run with ``sh``.

A job is ``prepare``, N empty stages, ``cleanup``. The GitLab driver runs as the runner
runs it, a process per stage: ``config``, ``prepare``, each stage and ``cleanup`` with
``corral-gitlab-fast`` (the C driver, built from this tree); the same with the Python
driver ``corral-gitlab`` for every stage; and called in this process (the driver's and the daemon's own work, without an
interpreter's start); the GitHub hooks as the runner runs them, a process per hook. The reference is the same N
stage scripts run on the host, a process each (GitLab's shell executor), with the ``sh``
the containers have (the base rootfs's busybox; the host's dash has no ``pipefail``).
Jobs of 0 and of N stages together split a job's cost into a fixed part and a part per
stage. Interleaved, round-robin, as the cold and exec phases.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from bench.host import BASE_ROOTFS
from bench.phases.common import Bench, Tool, interleave
from bench.stats import summarize
from executors import gitlab
from executors.build import build

REPO = Path(__file__).resolve().parents[2]
#: A stage with no commands, as GitLab Runner writes it for the ``sh`` shell.
EMPTY_STAGE = "#!/usr/bin/env sh\n\nset -eo pipefail\nset +o noclobber\n: | eval ''\nexit 0\n"
#: The issue's goal for a job's overhead: fixed part, and per stage (ms).
GOAL_JOB_MS = 50.0
GOAL_STAGE_MS = 10.0


class Jobs:
    """Whole jobs through each driver and with ``sh``, each call one job; its wall ms."""

    def __init__(self, bench: Bench, workdir: Path, stages: int) -> None:
        self.socket = str(bench.daemon.socket)
        self.workdir = workdir
        self.ids = itertools.count(1)
        self.script = workdir / "stage.sh"
        self.script.write_text(EMPTY_STAGE)
        # GitHub: the runner's work dir, bound at /__w, with the step's script in _temp.
        (workdir / "_work" / "_temp").mkdir(parents=True)
        (workdir / "_work" / "_temp" / "step.sh").write_text(":\n")
        (workdir / "images" / "busybox").mkdir(parents=True)
        (workdir / "images" / "busybox" / "1").symlink_to(BASE_ROOTFS)
        # corral-gitlab-fast from this tree, with the Python driver it runs for rare cases beside it.
        self.fast_program = str(build(workdir / "bin" / "corral-gitlab-fast"))
        python_driver = workdir / "bin" / "corral-gitlab"
        python_driver.write_text(f'#!/bin/sh\nexec {sys.executable} -m executors.gitlab "$@"\n')
        python_driver.chmod(0o755)
        # Bytecode as an installed driver has it (pip compiles it at install), cached in the
        # work dir during the warm-up rounds rather than compiled again by every process.
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.base_env = {
            **inherited,
            "PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
            "CORRAL_SOCKET": self.socket,
            "CORRAL_IMAGES": str(workdir / "images"),
            "PYTHONPATH": str(REPO),
            "BUILD_FAILURE_EXIT_CODE": "77",
            "SYSTEM_FAILURE_EXIT_CODE": "78",
        }

    def gitlab_env(self) -> dict[str, str]:
        return {**self.base_env, "CUSTOM_ENV_CI_JOB_ID": str(next(self.ids))}

    def gitlab_processes(self, stages: int, c: bool = False) -> float:
        """A job as the runner runs it: a process per stage (``config`` once per job too),
        each the C driver's with *c*, else the Python driver's."""
        env = self.gitlab_env()
        driver = [self.fast_program] if c else [sys.executable, "-m", "executors.gitlab"]
        t0 = time.perf_counter()
        self._run([*driver, "config"], env)
        self._run([*driver, "prepare"], env)
        for i in range(stages):
            self._run([*driver, "run", str(self.script), f"step_{i}"], env)
        self._run([*driver, "cleanup"], env)
        return (time.perf_counter() - t0) * 1000

    def gitlab_c(self, stages: int) -> float:
        return self.gitlab_processes(stages, c=True)

    def gitlab_in_process(self, stages: int) -> float:
        env = self.gitlab_env()
        t0 = time.perf_counter()
        calls = [
            ["config"],
            ["prepare"],
            *(["run", str(self.script), f"step_{i}"] for i in range(stages)),
        ]
        for argv in [*calls, ["cleanup"]]:
            with redirect_stdout(io.TextIOWrapper(io.BytesIO())):  # config's JSON, prepare's line
                status = gitlab.main(argv, env)
            if status != 0:
                raise RuntimeError(f"corral-gitlab {argv[0]} exited {status}")
        return (time.perf_counter() - t0) * 1000

    def github_processes(self, stages: int) -> float:
        response = self.workdir / "response.json"
        response.write_text("")
        mounts = [{"sourceVolumePath": str(self.workdir / "_work"), "targetVolumePath": "/__w"}]
        container = {"image": "busybox:1", "workingDirectory": "/__w", "systemMountVolumes": mounts}
        step = {"entryPoint": "sh", "entryPointArgs": ["-e", "/__w/_temp/step.sh"]}
        t0 = time.perf_counter()
        self._hook(
            {
                "command": "prepare_job",
                "responseFile": str(response),
                "args": {"container": container},
            }
        )
        state = json.loads(response.read_text())["state"]
        for _ in range(stages):
            self._hook({"command": "run_script_step", "state": state, "args": step})
        self._hook({"command": "cleanup_job", "state": state})
        return (time.perf_counter() - t0) * 1000

    def sh(self, stages: int) -> float:
        t0 = time.perf_counter()
        for _ in range(stages):
            self._run([str(BASE_ROOTFS / "bin" / "busybox"), "sh", str(self.script)], self.base_env)
        return (time.perf_counter() - t0) * 1000

    def python(self, code: str) -> float:
        t0 = time.perf_counter()
        self._run([sys.executable, "-c", code], self.base_env)
        return (time.perf_counter() - t0) * 1000

    def _hook(self, payload: dict[str, Any]) -> None:
        self._run([sys.executable, "-m", "executors.github"], self.base_env, json.dumps(payload))

    def _run(self, argv: list[str], env: dict[str, str], stdin: str = "") -> None:
        done = subprocess.run(argv, env=env, cwd=REPO, input=stdin.encode(), capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[-3:])}: exit {done.returncode}: {done.stderr.decode()[-300:]}"
            )


def measure(bench: Bench, rounds: int, stages: int) -> dict[str, Any]:
    """*rounds* recorded rounds of jobs of 0 and *stages* empty stages through each way."""
    workdir = Path(tempfile.mkdtemp(prefix="cbench-ci-", dir="/tmp"))
    try:
        jobs = Jobs(bench, workdir, stages)
        n = stages

        def job(fn: Callable[[int], float], count: int) -> Tool:
            return lambda: fn(count)

        tools: dict[str, Tool] = {
            "gitlab, C, 0 stages": job(jobs.gitlab_c, 0),
            f"gitlab, C, {n} stages": job(jobs.gitlab_c, n),
            "gitlab, processes, 0 stages": job(jobs.gitlab_processes, 0),
            f"gitlab, processes, {n} stages": job(jobs.gitlab_processes, n),
            "gitlab, in-process, 0 stages": job(jobs.gitlab_in_process, 0),
            f"gitlab, in-process, {n} stages": job(jobs.gitlab_in_process, n),
            "github, processes, 0 stages": job(jobs.github_processes, 0),
            f"github, processes, {n} stages": job(jobs.github_processes, n),
            f"sh on the host, {n} stages": job(jobs.sh, n),
            # What any Python driver pays per process before it does anything.
            "python, start only": lambda: jobs.python("pass"),
            "python, start + import driver": lambda: jobs.python("import executors.gitlab"),
        }
        samples = interleave(bench, tools, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stats = {k: summarize(v) for k, v in samples.items()}
    return {"stages": n, "samples_ms": samples, "stats": stats, "overhead": overhead(stats, n)}


def overhead(stats: dict[str, Any], n: int) -> dict[str, Any]:
    """Each driver's fixed cost per job (its 0-stage job) and its cost per stage beyond
    ``sh``'s, from the medians, with the ratio of a whole N-stage job to ``sh``'s."""
    sh = stats[f"sh on the host, {n} stages"].get("median")
    found: dict[str, Any] = {}
    for way in ("gitlab, C", "gitlab, processes", "gitlab, in-process", "github, processes"):
        zero = stats[f"{way}, 0 stages"].get("median")
        full = stats[f"{way}, {n} stages"].get("median")
        if zero is None or full is None or sh is None:
            continue
        per_stage = (full - zero) / n - sh / n
        found[way] = {
            "job_ms": zero,
            "stage_ms": per_stage,
            "job_ratio_to_sh": full / sh if sh else None,
            "job_goal_met": zero < GOAL_JOB_MS,
            "stage_goal_met": per_stage < GOAL_STAGE_MS,
        }
    return found
