"""Helpers of the CI driver tests: each driver runs as its runner runs it, a process of
its own per stage or hook, with the runner's arguments, environment and stdin, against a
private daemon.

This folder has no ``__init__.py``, unlike the others: ``tests/`` is no package, so pytest
would import this one as the package ``executors`` and shadow the drivers' own.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from supervisor.client import Client
from tests.conftest import REPO, Daemon, wait_until

#: Job ids of this test run: unique within the shared daemon.
_job_ids = itertools.count(os.getpid() * 1000)


def next_job_id() -> int:
    return next(_job_ids)


def driver_env(daemon: Daemon, extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment, the daemon's socket, the checkout on the path."""
    return {**os.environ, "CORRAL_SOCKET": str(daemon.socket), "PYTHONPATH": str(REPO), **extra}


def start(
    argv: list[str], env: Mapping[str, str], stdin: str | None = None
) -> subprocess.Popen[str]:
    """A driver process, its output in pipes (the runner reads them into the job log)."""
    process = subprocess.Popen(
        argv,
        env=dict(env),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    if stdin is not None:
        process.stdin.write(stdin)
    process.stdin.close()
    process.stdin = None  # written: communicate() has nothing more to send
    return process


def read_until(process: subprocess.Popen[str], text: str) -> str:
    """The driver's stdout, line by line, up to the first line holding *text*."""
    assert process.stdout is not None
    seen = ""
    for line in process.stdout:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"the driver ended without printing {text!r}: {seen!r}")


def cancel(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """SIGTERM, as the runner sends on a cancel or timeout; the driver's exit and output.
    (The wait's timeout only keeps a hung driver from hanging the suite.)"""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def only_init_left(client: Client, handle: str) -> bool:
    """Whether the container's only process is its init (its jobs are all gone)."""
    return bool(client.info(handle)["pids"]["current"] == 1)


def wait_only_init(client: Client, handle: str) -> None:
    wait_until(lambda: only_init_left(client, handle), what=f"{handle}'s jobs to be killed")


PYTHON = sys.executable


@pytest.fixture(scope="session")
def gitlab_fast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``corral-gitlab-fast`` built from this checkout's source, and beside it the
    ``corral-gitlab`` it runs for what it leaves to the Python driver: this checkout's,
    which first appends its arguments to ``$CORRAL_TEST_FALLBACKS`` (when set), so that
    a test sees whether the C program did the stage itself."""
    from executors.build import build

    bin_dir = tmp_path_factory.mktemp("bin")
    program = build(bin_dir / "corral-gitlab-fast")
    driver = bin_dir / "corral-gitlab"
    driver.write_text(
        "#!/bin/sh\n"
        '[ -z "$CORRAL_TEST_FALLBACKS" ] || echo "$*" >> "$CORRAL_TEST_FALLBACKS"\n'
        f'exec {PYTHON} -m executors.gitlab "$@"\n'
    )
    driver.chmod(0o755)
    return program


@pytest.fixture
def images(tmp_path: Path, artifacts: tuple[Path, Path]) -> Iterator[Path]:
    """A CORRAL_IMAGES directory where the image ``busybox:1`` is the base rootfs."""
    root = tmp_path / "images"
    (root / "busybox").mkdir(parents=True)
    (root / "busybox" / "1").symlink_to(artifacts[1])
    yield root
