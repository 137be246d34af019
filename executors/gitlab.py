"""``corral-gitlab``: a GitLab Runner custom executor driver (docs/ci-executors.md).

The runner calls it once per stage, each time a new process::

    corral-gitlab config                 # prints the JSON the runner reads
    corral-gitlab prepare                # creates the job's container
    corral-gitlab run SCRIPT STAGE       # once per sub-stage: runs SCRIPT in it
    corral-gitlab cleanup                # destroys it, whatever happened before

No state is kept between the calls: the container is named after the job
(``gitlab-JOB_ID``), so a driver or a daemon restarted between stages finds it again.
A failed user script exits with ``BUILD_FAILURE_EXIT_CODE``, anything else that goes
wrong with ``SYSTEM_FAILURE_EXIT_CODE`` (both set by the runner).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

from executors.common import (
    MAX_INLINE_SCRIPT,
    Cancelled,
    DriverError,
    Settings,
    cancellable,
    fail,
    kill_processes,
    quote,
    run_streamed,
)
from supervisor import errors

PROGRAM = "corral-gitlab"
VERSION = "0.1.0"
DEFAULT_BUILDS_DIR = "/builds"
DEFAULT_CACHE_DIR = "/cache"
#: Where a script too long to be a spawn's SCRIPT is copied in the container (a prefix).
SCRIPTS_PREFIX = "/tmp/corral-gitlab-"


class BuildFailure(Exception):
    """The user's script failed with this exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the job's script exited {status}")
        self.status = status


def job_handle(env: Mapping[str, str]) -> str:
    """The container's handle, from the job id the runner gives every stage."""
    job_id = env.get("CUSTOM_ENV_CI_JOB_ID", "")
    if not job_id.isdigit():
        raise DriverError(
            f"CUSTOM_ENV_CI_JOB_ID: {job_id!r} is not a job id (not run by GitLab Runner?)"
        )
    return f"gitlab-{job_id}"


def exit_code(env: Mapping[str, str], name: str, default: int) -> int:
    """The runner's exit code *name*; *default* only when the runner did not set it."""
    text = env.get(name, "")
    return int(text) if text.lstrip("-").isdigit() else default


class Invocation:
    """What the runner asked for: the stage, with its arguments."""

    def __init__(self, stage: str, script: Path | None = None, sub_stage: str = "") -> None:
        self.stage = stage
        #: ``run``: the script the runner wrote, and its sub-stage (get_sources...).
        self.script = script
        self.sub_stage = sub_stage
        #: ``config`` and ``prepare``: the job's directories in the container.
        self.builds_dir = DEFAULT_BUILDS_DIR
        self.cache_dir = DEFAULT_CACHE_DIR


USAGE = f"""usage: {PROGRAM} config|prepare [--builds-dir DIR] [--cache-dir DIR]
       {PROGRAM} run SCRIPT STAGE
       {PROGRAM} cleanup

The GitLab Runner custom executor on Corral: config_args = ["config"], prepare_args =
["prepare"], run_args = ["run"], cleanup_args = ["cleanup"] (docs/ci-executors.md).
DIR is in the container (default {DEFAULT_BUILDS_DIR} and {DEFAULT_CACHE_DIR})."""


class UsageError(Exception):
    """The command line is not one the runner's ``*_args`` make."""


def parse(argv: list[str]) -> Invocation:
    """The command line, as the runner's ``*_args`` and its own arguments make it (parsed by
    hand: argparse would add its import to every stage)."""
    if not argv:
        raise UsageError("no stage given")
    stage, rest = argv[0], argv[1:]
    if stage == "run":
        if len(rest) != 2:
            raise UsageError(f"run takes SCRIPT STAGE, got {len(rest)} arguments")
        return Invocation(stage, Path(rest[0]), rest[1])
    if stage == "cleanup" and not rest:
        return Invocation(stage)
    if stage not in ("config", "prepare"):
        raise UsageError(
            f"{stage!r} is not a stage (config, prepare, run, cleanup) or takes no arguments"
        )
    invocation = Invocation(stage)
    while rest:
        option, value, *rest = rest if len(rest) >= 2 else [*rest, ""]
        if option not in ("--builds-dir", "--cache-dir") or not value.startswith("/"):
            raise UsageError(
                f"{stage}: {option} {value!r}: expected --builds-dir or --cache-dir and an absolute path"
            )
        setattr(invocation, option[2:].replace("-", "_"), value)
    return invocation


def config(args: Invocation, env: Mapping[str, str]) -> None:
    """Print the custom executor's config JSON."""
    handle = job_handle(env)
    print(
        json.dumps(
            {
                "builds_dir": args.builds_dir,
                "cache_dir": args.cache_dir,
                "builds_dir_is_shared": False,
                "hostname": handle,
                "driver": {"name": "corral", "version": VERSION},
                "job_env": {"CORRAL_HANDLE": handle},
                "shell": "sh",
            }
        )
    )


def prepare(args: Invocation, env: Mapping[str, str]) -> None:
    """Create the job's container (replacing one left by an earlier attempt of this
    prepare) and its builds and cache directories, owned by the job's user."""
    settings = Settings.from_env(env)
    handle = job_handle(env)
    create = settings.create_config(handle, env.get("CUSTOM_ENV_CI_JOB_IMAGE"))
    create["properties"] = {"executor": "gitlab", "job_id": handle.removeprefix("gitlab-")}
    with settings.connect() as client:
        with suppress(errors.UnknownHandle):
            client.destroy(handle)  # the runner retries prepare: this job's own leftover
        client.create(create)
        print(f"{PROGRAM}: container {handle} created", flush=True)
        dirs = " ".join(quote(d) for d in (args.builds_dir, args.cache_dir))
        status, _, err = client.run(
            handle, f"mkdir -p {dirs} && chown corral:corral {dirs}", privileged=True
        )
        if status != 0:
            raise DriverError(f"container {handle}: cannot make {dirs}: {err.strip()}")


def stage_script(client_script: Path) -> str:
    """The runner's script for one stage, read from the host."""
    try:
        return client_script.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise DriverError(f"script {client_script}: {exc.strerror}") from exc


def run(args: Invocation, env: Mapping[str, str]) -> None:
    """Run one stage's script in the job's container, streaming its output."""
    settings = Settings.from_env(env)
    handle = job_handle(env)
    assert args.script is not None
    script = stage_script(args.script)
    with settings.connect() as client:
        copied = None
        if len(script.encode("utf-8", "surrogateescape")) > MAX_INLINE_SCRIPT or "\0" in script:
            # Too long to be one argument: the script goes in as a file and sh reads it.
            copied = f"{SCRIPTS_PREFIX}{os.urandom(6).hex()}.sh"
            client.call("copy", handle, "in", str(args.script), copied)
            script = f"sh {quote(copied)}"
        try:
            status = run_streamed(client, handle, script)
        except Cancelled as exc:
            kill_processes(settings, handle)
            raise Cancelled(f"{exc}; the stage's processes were killed") from None
        if copied is not None:
            client.run(handle, f"rm -f {quote(copied)}")
    if status is None:
        raise DriverError(
            f"container {handle}: the stage's job has no exit status (the container stopped under it)"
        )
    if status != 0:
        raise BuildFailure(status)


def cleanup(args: Invocation, env: Mapping[str, str]) -> None:
    """Destroy the job's container; one already gone is not an error."""
    settings = Settings.from_env(env)
    handle = job_handle(env)
    with settings.connect() as client, suppress(errors.UnknownHandle):
        client.destroy(handle)


STAGES: dict[str, Callable[[Invocation, Mapping[str, str]], None]] = {
    "config": config,
    "prepare": prepare,
    "run": run,
    "cleanup": cleanup,
}


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    """Run one stage; its exit status as the runner reads it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        args = parse(argv)
    except UsageError as exc:
        print(f"{USAGE}\n{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    build_failure = exit_code(env, "BUILD_FAILURE_EXIT_CODE", 1)
    system_failure = exit_code(env, "SYSTEM_FAILURE_EXIT_CODE", 2)
    label = f"{args.stage} {args.sub_stage}".strip()
    try:
        with cancellable():
            STAGES[args.stage](args, env)
    except BuildFailure as exc:
        if env.get("BUILD_EXIT_CODE_FILE"):
            # The runner reads the script's own status from here (allow_failure: exit_codes).
            try:
                Path(env["BUILD_EXIT_CODE_FILE"]).write_text(f"{exc.status}\n")
            except OSError as error:
                fail(PROGRAM, f"{label}: BUILD_EXIT_CODE_FILE: {error.strerror}")
                return system_failure
        return build_failure
    except Cancelled as exc:
        fail(PROGRAM, f"{label}: cancelled by {exc}")
        return build_failure
    except (DriverError, errors.CorralError, OSError) as exc:
        fail(PROGRAM, f"{label}: {exc}")
        return system_failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
