"""``corral-github-hooks``: the GitHub Actions runner's container hooks on Corral
(docs/ci-executors.md).

The runner runs the hook (``ACTIONS_RUNNER_CONTAINER_HOOKS``, pointing at
``github-hooks.sh``, which runs this) once per hook, with one JSON object on stdin::

    {"command": "prepare_job" | "run_script_step" | "run_container_step" | "cleanup_job",
     "responseFile": PATH, "state": {...}, "args": {...}}

``prepare_job`` creates the job's container and appends ``{"state": {"handle": H},
"context": ..., "isAlpine": ...}`` to the response file; the runner hands ``state`` back to
every later hook. Steps run as root with Docker's default capability set, as in a Docker
job container (they write to the runner's work directory, bound in at ``/__w``). A step's
exit status is the hook's; a hook that cannot do its work prints why and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from executors.common import (
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
from supervisor.client import Client

PROGRAM = "corral-github-hooks"
HOOK_FAILED = 1


def field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """*obj*[*name*], which must be a *kind*; DriverError naming it otherwise."""
    value = obj.get(name)
    if not isinstance(value, kind):
        raise DriverError(f"{where}.{name}: expected a {kind.__name__}, got {value!r}")
    return value


def bind_mounts(container: Mapping[str, Any], where: str) -> list[list[Any]]:
    """The runner's mounts as ``bind_mounts``: its own (work dir, externals, temp) where they
    exist on this host, the workflow's user mounts only as host paths (Corral has no named
    volumes). A Docker socket the runner offers is never bound: it would hand the job the
    host."""
    mounts = []
    for kind in ("systemMountVolumes", "userMountVolumes"):
        for i, mount in enumerate(container.get(kind) or []):
            at = f"{where}.{kind}[{i}]"
            source = field(mount, "sourceVolumePath", str, at)
            target = field(mount, "targetVolumePath", str, at)
            mode = "ro" if mount.get("readOnly") else "rw"
            if os.path.basename(source) == "docker.sock":
                continue
            if not source.startswith("/") or not os.path.exists(source):
                if kind == "userMountVolumes":
                    raise DriverError(f"{at}: {source!r} is not a path on this host")
                continue  # the runner's, for a Docker host: not here
            mounts.append([os.path.normpath(source), target, {"mode": mode}])
    return mounts


def environment(args: Mapping[str, Any], where: str) -> dict[str, str]:
    env = args.get("environmentVariables") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise DriverError(f"{where}.environmentVariables: expected an object of strings")
    return env


def step_script(args: Mapping[str, Any], where: str) -> str:
    """The shell line of a step: its PATH additions, then its entry point with arguments."""
    entry = field(args, "entryPoint", str, where)
    argv = args.get("entryPointArgs") or []
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise DriverError(f"{where}.entryPointArgs: expected a list of strings")
    script = "exec " + " ".join(quote(a) for a in [entry, *argv])
    prepend = args.get("prependPath") or []
    if isinstance(prepend, str):  # some runner versions send one ':'-joined string
        prepend = [prepend]
    if prepend:
        script = f'PATH={quote(":".join(prepend))}:"$PATH"; export PATH; {script}'
    return script


def run_step(
    settings: Settings, client: Client, handle: str, args: Mapping[str, Any], where: str
) -> int:
    """Run a step in *handle*; its exit status."""
    opts: dict[str, Any] = {"privileged": True, "env": environment(args, where)}
    if args.get("workingDirectory"):
        opts["dir"] = field(args, "workingDirectory", str, where)
    try:
        status = run_streamed(client, handle, step_script(args, where), **opts)
    except Cancelled as exc:
        kill_processes(settings, handle)
        raise Cancelled(f"{exc}; the step's processes were killed") from None
    if status is None:
        raise DriverError(
            f"container {handle}: the step has no exit status (the container stopped under it)"
        )
    return status


def prepare_job(settings: Settings, hook: Mapping[str, Any]) -> int:
    """Create the job's container and tell the runner its handle."""
    args = hook.get("args") or {}
    container = args.get("container")
    if args.get("services"):
        raise DriverError(
            "args.services: service containers are not supported by Corral's hooks yet"
        )
    if not container:
        # No job container: the runner runs the steps on the host, as with no hooks.
        return 0
    image = field(container, "image", str, "args.container")
    handle = f"github-{os.urandom(6).hex()}"
    create = settings.create_config(handle, image)
    create["bind_mounts"] = bind_mounts(container, "args.container")
    create["env"] = environment(container, "args.container")
    create["properties"] = {"executor": "github"}
    with settings.connect() as client:
        client.create(create)
        # The runner's question is about the job's image, a directory or a registry's.
        is_alpine = client.run(handle, "test -f /etc/alpine-release")[0] == 0
    response = {
        "state": {"handle": handle},
        # No network or ports: the runner reads the ports of services only, and has none here.
        "context": {"container": {"id": handle}, "services": []},
        "isAlpine": is_alpine,
    }
    respond(hook, response)
    return 0


def respond(hook: Mapping[str, Any], response: dict[str, Any]) -> None:
    """Append *response* to the runner's response file, one JSON line (as the runner's own
    hook library does)."""
    path = field(hook, "responseFile", str, "input")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(response) + "\n")


def job_handle(hook: Mapping[str, Any]) -> str:
    state = hook.get("state") or {}
    return str(field(state, "handle", str, "state"))


def run_script_step(settings: Settings, hook: Mapping[str, Any]) -> int:
    """Run a script step in the job's container."""
    handle = job_handle(hook)
    args = field(hook, "args", dict, "input")
    with settings.connect() as client:
        return run_step(settings, client, handle, args, "args")


def run_container_step(settings: Settings, hook: Mapping[str, Any]) -> int:
    """Run a container action in a container of its own, with the job's mounts; it is
    destroyed when the step ends, also when the step is cancelled."""
    args = field(hook, "args", dict, "input")
    if args.get("dockerfile"):
        raise DriverError("args.dockerfile: Corral cannot build images; use a prebuilt image")
    image = field(args, "image", str, "args")
    handle = f"github-step-{os.urandom(6).hex()}"
    create = settings.create_config(handle, image)
    create["bind_mounts"] = bind_mounts(args, "args")
    create["properties"] = {"executor": "github"}
    with settings.connect() as client:
        client.create(create)
        try:
            return run_step(settings, client, handle, args, "args")
        finally:
            with settings.connect() as other, suppress(errors.UnknownHandle):
                other.destroy(handle)


def cleanup_job(settings: Settings, hook: Mapping[str, Any]) -> int:
    """Destroy the job's container (gone already is fine; no container, nothing to do)."""
    state = hook.get("state") or {}
    if "handle" not in state:
        return 0
    with settings.connect() as client, suppress(errors.UnknownHandle):
        client.destroy(job_handle(hook))
    return 0


HOOKS = {
    "prepare_job": prepare_job,
    "run_script_step": run_script_step,
    "run_container_step": run_container_step,
    "cleanup_job": cleanup_job,
}


def read_input(text: str) -> dict[str, Any]:
    """The runner's JSON object (it may end with a newline)."""
    try:
        hook = json.loads(text)
    except ValueError as exc:
        raise DriverError(f"input: not JSON ({exc})") from None
    if not isinstance(hook, dict):
        raise DriverError("input: expected a JSON object")
    command = hook.get("command")
    if command not in HOOKS:
        raise DriverError(f"input.command: {command!r} is not one of {', '.join(HOOKS)}")
    return hook


def main(env: Mapping[str, str] = os.environ) -> int:
    """Run the hook the runner asks for, reading its JSON from stdin; the exit status."""
    command = "input"
    try:
        with cancellable():
            settings = Settings.from_env(env)
            hook = read_input(sys.stdin.read())
            command = hook["command"]
            return HOOKS[command](settings, hook)
    except Cancelled as exc:
        fail(PROGRAM, f"{command}: cancelled by {exc}")
    except (DriverError, errors.CorralError, OSError) as exc:
        fail(PROGRAM, f"{command}: {exc}")
    return HOOK_FAILED


if __name__ == "__main__":
    sys.exit(main())
