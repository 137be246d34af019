"""``run``, ``create`` and ``exec``, as Docker and Podman have them, and the plumbing of a job
the CLI is attached to: its output as it comes, our stdin, signals and window size to it,
its exit status as ours.

A container made here is reaped by grace only when asked (``--grace-time``): a Warden
client holds its connection for as long as it needs a container, a CLI user does not.
With ``--rm`` its grace time is 0, so the daemon destroys it even if this process is
killed before it could.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time

from supervisor.cli.command import Command, Fail, connect, exit_status, pairs, parse_size
from supervisor.cli.oneshot import FORWARDED

TYPE_CHECKING = False  # typing costs 3 ms to import, on every `corral run`
if TYPE_CHECKING:
    from typing import Any

    from supervisor.client import Client

#: Properties the CLI sets at create, for ps, logs and the like (docs/cli.md).
CREATED, COMMAND, ROOT, MAIN_JOB = "corral.created", "corral.command", "corral.root", "corral.job"


# -- options ------------------------------------------------------------------------------


def _container_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``create`` and ``run`` that make the container."""
    g = p.add_argument_group("container")
    g.add_argument("--name", help="the handle (1-64 of A-Za-z0-9_.-); default 12 hex digits")
    g.add_argument("--rootfs", metavar="DIR", help="root filesystem (default: the base rootfs)")
    g.add_argument("--image", metavar="REF", help="an image of the store, pulled when missing")
    g.add_argument("-m", "--memory", metavar="SIZE", help="memory limit (64m, 1g; swap counted)")
    g.add_argument("--cpus", type=float, help="CPU quota in cores (0.5: half a core)")
    g.add_argument("--cpuset-cpus", metavar="CORES", help='cores it may use ("0-1", "1,3")')
    g.add_argument("--pids-limit", type=int, metavar="N", help="processes and threads at most")
    g.add_argument("--disk", metavar="SIZE", help="a writable layer of that size (1g)")
    g.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST:CTR[:ro]",
        help="bind a host path (read-write unless :ro)",
    )
    g.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[ADDR:]HOST:CTR",
        help="forward a host TCP port to the container (HOST empty: one of the pool)",
    )
    g.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="environment")
    g.add_argument("--network-address", metavar="CIDR", help="its address (on a bridge subnet)")
    g.add_argument(
        "--userns",
        choices=("host",),
        help="host: the host's ids (default: a block of host ids of its own)",
    )
    g.add_argument(
        "--fuse",
        action="store_true",
        help="/dev/fuse, and privileged jobs that may mount FUSE filesystems",
    )
    g.add_argument(
        "-l", "--label", "--property", action="append", default=[], metavar="K=V", dest="label"
    )
    g.add_argument(
        "--grace-time",
        type=float,
        metavar="SECONDS",
        help="destroy it this long after the last client left (default: never)",
    )
    g.add_argument(
        "--config", metavar="JSON", help="create CONFIG to start from (docs/protocol.md)"
    )


def _job_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``run`` and ``exec`` that make the job."""
    g = p.add_argument_group("job")
    g.add_argument("-i", "--interactive", action="store_true", help="pass our stdin to the job")
    g.add_argument("-t", "--tty", action="store_true", help="give the job a terminal")
    g.add_argument("-d", "--detach", action="store_true", help="start it and return")
    g.add_argument("-u", "--user", help="user name or uid (default corral; root if privileged)")
    g.add_argument("-w", "--workdir", help="working directory (default the user's home)")
    g.add_argument("--privileged", action="store_true", help="root with a restricted cap set")
    g.add_argument("--timeout", type=float, metavar="SECONDS", help="kill the job after this long")
    g.add_argument("--json", action="store_true", help="print a JSON object, not the output")


def _env(items: list[str]) -> dict[str, str]:
    """Docker's ``-e K=V``, and ``-e K`` for our own value of K."""
    out = {}
    for item in items:
        if "=" not in item and item in os.environ:
            out[item] = os.environ[item]
        else:
            out.update(pairs([item], "-e"))
    return out


def _volume(spec: str) -> list[Any]:
    parts = spec.split(":")
    mode = "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        mode = parts.pop()
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise Fail(f"-v {spec!r} is not HOST:CONTAINER[:ro]")
    return [os.path.abspath(parts[0]), parts[1], {"mode": mode}]


def parse_publish(spec: str) -> dict[str, Any]:
    """``[ADDR:]HOST:CTR`` (HOST may be empty: the daemon picks one) as ``net in`` OPTS."""
    parts = spec.split(":")
    if len(parts) > 3 or not all(p.isdigit() for p in parts[-2:] if p) or not parts[-1]:
        raise Fail(f"-p {spec!r} is not [ADDR:]HOST_PORT:CONTAINER_PORT")
    opts: dict[str, Any] = {"container_port": int(parts[-1])}
    if len(parts) >= 2 and parts[-2]:
        opts["host_port"] = int(parts[-2])
    if len(parts) == 3 and parts[0]:
        opts["host_address"] = parts[0]
    return opts


def container_config(args: argparse.Namespace, image: str | None) -> dict[str, Any]:
    """The create CONFIG the options ask for (checked here as far as they can be)."""
    config: dict[str, Any] = {}
    if args.config:
        import json

        try:
            config = json.loads(args.config)
        except json.JSONDecodeError as exc:
            raise Fail(f"--config is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise Fail("--config must be a JSON object, e.g. '{\"grace_time\": 60}'")
    # Not reaped unless asked: nobody holds a connection for a container made here.
    config.setdefault("grace_time", None)
    if args.grace_time is not None:
        config["grace_time"] = args.grace_time
    if args.name:
        config["handle"] = args.name
    if args.rootfs:
        config["rootfs"] = os.path.abspath(args.rootfs)
    if image:
        config["image"] = image
        config.setdefault("image_pull", "missing")
    limits = dict(config.get("limits") or {})
    if args.memory:
        limits["mem"] = parse_size(args.memory, "--memory")
    if args.cpus is not None:
        limits["cpus"] = args.cpus
    if args.cpuset_cpus:
        limits["cpuset"] = args.cpuset_cpus
    if args.pids_limit is not None:
        limits["pids"] = args.pids_limit
    if limits:
        config["limits"] = limits
    if args.disk:
        config["disk_size_mb"] = -(-parse_size(args.disk, "--disk") // (1 << 20))
    if args.volume:
        config["bind_mounts"] = [*config.get("bind_mounts", []), *map(_volume, args.volume)]
    if args.env:
        config["env"] = {**config.get("env", {}), **_env(args.env)}
    if args.network_address:
        config["network"] = {**config.get("network", {}), "address": args.network_address}
    if args.userns == "host":
        config["userns"] = False
    if args.fuse:
        config["fuse"] = True
    properties = {**config.get("properties", {}), **pairs(args.label, "--label")}
    properties.setdefault(CREATED, str(int(time.time())))
    properties.setdefault(ROOT, image or config.get("image") or config.get("rootfs") or "base")
    config["properties"] = properties
    return config


def job_opts(args: argparse.Namespace, env: bool) -> dict[str, Any]:
    """spawn OPTS of the job options (``env``: ``-e`` is the job's, as for ``exec``)."""
    from supervisor.cli.tty import local_size

    opts: dict[str, Any] = {
        "privileged": args.privileged or None,
        "user": args.user,
        "dir": args.workdir,
        "timeout": args.timeout,
        "env": (_env(args.env) or None) if env else None,
    }
    if args.tty:
        rows, cols = local_size()
        opts["tty"] = {"rows": rows, "cols": cols}
    elif args.interactive:
        opts["stdin"] = True
    return {k: v for k, v in opts.items() if v is not None}


def _check_modes(args: argparse.Namespace) -> None:
    if args.json and (args.interactive or args.tty):
        raise Fail("--json prints the output at the end: not with -i or -t")
    if args.tty and args.interactive and not args.detach and not os.isatty(0):
        raise Fail("the input device is not a TTY: drop -t, or run from a terminal")


def _split_command(rest: list[str], positional_image: bool) -> tuple[str | None, list[str]]:
    """``[IMAGE] [--] CMD ARGS...`` as argparse left them (it keeps a first ``--``)."""
    if rest[:1] == ["--"]:
        return None, rest[1:]
    if not positional_image or not rest:
        return None, rest
    image, rest = rest[0], rest[1:]
    return image, rest[1:] if rest[:1] == ["--"] else rest


def _argv(client: Client, image: str | None, command: list[str]) -> list[str]:
    """The job's argv: CMD, or the image's Entrypoint + (CMD or its Cmd), or a shell."""
    from supervisor.errors import InvalidRequest

    if image is None:
        return command or ["/bin/sh"]
    try:
        inspected = client.call("image-inspect", image)
    except InvalidRequest:  # not in the store (or no such name): docker run pulls it
        print(f"corral: pulling {image}", file=sys.stderr)
        client.call_with_progress("image-pull", image, progress=_progress)
        inspected = client.call("image-inspect", image)
    config = inspected.get("config") or {}
    argv = list(config.get("Entrypoint") or []) + (command or list(config.get("Cmd") or []))
    if not argv:
        raise Fail(f"image {image} has no Entrypoint nor Cmd: give a command after --")
    return argv


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def script_of(argv: list[str]) -> str:
    """An argv as a spawn SCRIPT: run as it is, never through a shell's word splitting."""
    return "exec " + shlex.join(argv)


def _publish(client: Client, handle: str, specs: list[str]) -> list[dict[str, Any]]:
    return [client.call("net", handle, "in", parse_publish(spec)) for spec in specs]


# -- attached jobs ------------------------------------------------------------------------


def attach(
    client: Client, handle: str, job_id: int, stdin: bool, terminal: bool
) -> tuple[int, dict[str, Any]]:
    """Be the job's front: its output to ours as it comes, our stdin (and, with a terminal,
    window size) to it, the signals we get to it. Returns (exit status, ``ended``).

    Output comes on a connection of its own, stdin on another (a job that does not read
    makes a write wait, and a signal must not wait behind it); signals and resizes go
    on *client* from a thread, as a handler must not use a connection the code it
    interrupted may be using.
    """
    import threading
    from _queue import SimpleQueue  # queue.SimpleQueue itself, without queue's imports (2 ms)

    from supervisor.cli.tty import RawMode, local_size
    from supervisor.client import Client, JobProcess

    path, timeout = socket_path_of(client), client.timeout
    todo: SimpleQueue[tuple[str, int] | None] = SimpleQueue()

    def forward() -> None:
        job = JobProcess(client, handle, job_id)
        while (item := todo.get()) is not None:
            try:
                if item[0] == "resize":
                    job.resize(*local_size())
                else:
                    job.send_signal(item[1])
            except Exception:  # the job has ended meanwhile: its stream is ending too
                pass

    def feed() -> None:
        try:
            with Client(path, timeout) as writer:
                job = JobProcess(writer, handle, job_id)
                while data := os.read(0, 65536):
                    job.write(data)
                if not terminal:  # a terminal's EOF is the ^D typed in raw mode
                    job.close_stdin()
        except Exception:  # the job ended, or stopped reading
            pass

    def on_signal(signum: int, frame: object) -> None:
        todo.put(("signal", signum))

    handlers = {signum: on_signal for signum in FORWARDED}
    if terminal:
        handlers[signal.SIGWINCH] = lambda signum, frame: todo.put(("resize", signum))
    saved = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    forwarder = threading.Thread(target=forward, daemon=True)
    forwarder.start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers)  # held since the spawn (run_job)
    try:
        with RawMode(0) if terminal and stdin else _Nothing():
            if stdin:
                threading.Thread(target=feed, daemon=True).start()
            final = _follow(path, timeout, handle, job_id)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        todo.put(None)
        forwarder.join(timeout=5)
    return exit_status(final.get("status")), final.get("ended") or {}


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def socket_path_of(client: Client) -> str:
    return str(client.path)


def _follow(path: str, timeout: float | None, handle: str, job_id: int) -> dict[str, Any]:
    """Copy the job's output to ours until it ends; the stream's final payload."""
    from supervisor.client import Client

    out, err = sys.stdout.buffer, sys.stderr.buffer
    sys.stdout.flush()
    with Client(path, timeout) as reader:
        chunks = reader.stream_bytes(handle, job_id, ended=True)
        while True:
            try:
                name, chunk = next(chunks)
            except StopIteration as end:
                return end.value if isinstance(end.value, dict) else {}
            if name == "cut":
                what = chunk.decode()
                print(f"corral: the job's {what} was cut at the output limit", file=sys.stderr)
                continue
            target = out if name == "stdout" else err
            target.write(chunk)
            target.flush()


def run_job(
    client: Client, handle: str, script: str, opts: dict[str, Any], args: argparse.Namespace
) -> tuple[int, int]:
    """Spawn the job and follow it, or collect it for ``--json``: (job id, exit status)."""
    # From the spawn on, a signal we get is the job's: held back until attach passes it on
    # (delivered before, SIGUSR1 would end us, SIGINT raise here).
    held = set(FORWARDED)
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        job_id: int = client.spawn(handle, script, **opts)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        raise
    if args.json:
        import json

        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        status, out, err, report = client.link(handle, job_id, ended=True)
        print(
            json.dumps(
                {
                    "handle": handle,
                    "job_id": job_id,
                    "status": status,
                    "ended": report["ended"],
                    "stdout": out,
                    "stderr": err,
                }
            )
        )
        return job_id, exit_status(status)
    status, _ = attach(client, handle, job_id, bool(args.interactive), bool(args.tty))
    return job_id, status


# -- commands -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    _check_modes(args)
    if args.rm and args.detach:
        raise Fail("--rm with -d: nothing would remove it when its job ends; drop one")
    image, command = _split_command(args.command, positional_image=not args.image)
    image = image or args.image
    config = container_config(args, image)
    if args.rm:
        config["grace_time"] = 0  # gone with our connection, even if we are killed
    with connect(args) as client:
        argv = _argv(client, image, command)
        config["properties"].setdefault(COMMAND, shlex.join(argv))
        config["properties"].setdefault(MAIN_JOB, "1")  # a new container's first job
        handle = client.create(config)
        job_id = None
        try:
            _publish(client, handle, args.publish)
            opts = job_opts(args, env=False)
            if args.detach:
                job_id = client.spawn(handle, script_of(argv), **opts)
                _print_started(args, handle, job_id)
                return 0
            job_id, status = run_job(client, handle, script_of(argv), opts, args)
        finally:
            if args.rm or job_id is None:  # a container whose job never started is no use
                _quietly(client.destroy, handle)
            elif not args.detach:
                # Its main job is over: as Docker's exited container, nothing of it runs
                # on; its root, output and limits stay until `corral rm`.
                _quietly(client.stop, handle, kill=True)
    return status


def _quietly(fn: Any, *a: Any, **kw: Any) -> None:
    try:
        fn(*a, **kw)
    except Exception:  # already gone (destroyed by someone else): nothing to undo
        pass


def _print_started(args: argparse.Namespace, handle: str, job_id: int | None) -> None:
    if args.json:
        import json

        print(json.dumps({"handle": handle, "job_id": job_id}))
    else:
        print(handle)


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true", help="destroy the container when the job ends")
    _container_arguments(p)
    _job_arguments(p)
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="[IMAGE] [--] CMD ARGS...",
        help="the program and its arguments, run as they are (no shell); default /bin/sh, "
        "or the image's Entrypoint and Cmd",
    )


def create(args: argparse.Namespace) -> int:
    config = container_config(args, args.image_ref or args.image)
    with connect(args) as client:
        handle = client.create(config)
        try:
            forwards = _publish(client, handle, args.publish)
        except BaseException:
            _quietly(client.destroy, handle)
            raise
    if args.json:
        import json

        print(json.dumps({"handle": handle, "net_in": forwards}))
    else:
        print(handle)
    return 0


def _create_arguments(p: argparse.ArgumentParser) -> None:
    _container_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("image_ref", nargs="?", metavar="IMAGE", help="as --image")


def exec_(args: argparse.Namespace) -> int:
    _check_modes(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise Fail("exec needs a command: corral exec HANDLE CMD ARGS...")
    opts = job_opts(args, env=True)
    with connect(args) as client:
        if args.detach:
            job_id = client.spawn(args.handle, script_of(command), **opts)
            if args.json:
                _print_started(args, args.handle, job_id)
            else:
                print(job_id)
            return 0
        return run_job(client, args.handle, script_of(command), opts, args)[1]


def _exec_arguments(p: argparse.ArgumentParser) -> None:
    _job_arguments(p)
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("handle")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="[--] CMD ARGS...")


COMMANDS = [
    Command("run", "run a command in a new container (as docker run)", run, _run_arguments),
    Command(
        "create",
        "create a container, print its handle (as docker create)",
        create,
        _create_arguments,
    ),
    Command("exec", "run a command in a running container", exec_, _exec_arguments),
]
